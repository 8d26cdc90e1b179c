"""Preference data for training the judge, and the generated default.

Preference JSONL (one pair per line):
    {"id": "p1",                                    optional
     "conversation": [{"role": "user", "content": "What is 3 + 4?"}],   ends with the user turn
     "response_1": "<think>...</think>7", "response_2": "9",   assistant texts, reasoning (if any) in <think>
     "score_1": 5, "score_2": 1,                    1-5 each
     "ranking": 1}                                  1 (response 1 far better) .. 6 (response 2 far better)

`judge_tasks` turns each pair into two RL tasks for the `pairwise_judge` environment, as given and
with the responses swapped, so the judge cannot learn a position.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from common.synthetic import math_problem
from genrm.judge import Judgement, candidate_answer, format_judgement, judge_messages


class PreferenceError(ValueError):
    """A bad preference row; the message names file, line and field."""


def _check(row, where: str) -> dict:
    if not isinstance(row, dict):
        raise PreferenceError(f"{where}: a row must be a JSON object")
    conv = row.get("conversation")
    if not isinstance(conv, list) or not conv or not all(isinstance(m, dict) for m in conv):
        raise PreferenceError(f"{where}: conversation: a non-empty list of messages is required")
    if conv[-1].get("role") != "user":
        raise PreferenceError(f"{where}: conversation: must end with the user turn being answered")
    for k in ("response_1", "response_2"):
        if not isinstance(row.get(k), str):
            raise PreferenceError(f"{where}: {k}: a string is required")
    for k, lo, hi in (("score_1", 1, 5), ("score_2", 1, 5), ("ranking", 1, 6)):
        v = row.get(k)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            raise PreferenceError(f"{where}: {k}: a number in [{lo}, {hi}] is required, got {v!r}")
    return row


def load_preferences(path: str | Path) -> list[dict]:
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PreferenceError(f"{path}:{n}: not JSON ({e.msg})") from None
            rows.append({"id": f"{Path(path).stem}-{n}", **_check(row, f"{path}:{n}")})
    if not rows:
        raise PreferenceError(f"{path}: no preference rows")
    return rows


def judge_tasks(pairs: list[dict], thinking: bool = False) -> list[dict]:
    """Two `pairwise_judge` tasks per pair: as given, and swapped (scores swapped, ranking 7 - r)."""
    out = []
    for p in pairs:
        gold = Judgement(p["score_1"], p["score_2"], p["ranking"])
        for suffix, (r1, r2), g in (("", (p["response_1"], p["response_2"]), gold),
                                    ("-swapped", (p["response_2"], p["response_1"]), gold.swapped())):
            out.append({"id": f"{p['id']}{suffix}", "env": "pairwise_judge",
                        "messages": judge_messages(p["conversation"], candidate_answer(r1, thinking),
                                                   candidate_answer(r2, thinking)),
                        "score_1": g.score_1, "score_2": g.score_2, "ranking": g.ranking})
    return out


# ------------------------------------------------------------------------- generated default
# How a response to a generated math question can look: the three answer styles the policy's data
# uses (concise first), or no answer at all. Right and not padded: 5; right but padded: 3; wrong: 1.
STYLES = {"boxed": "\\boxed{{{}}}", "words": "The answer is {}.",
          "padded": "Well, let me see. I think that the answer to this question is {}, I believe."}


def _near(rng: random.Random, x: int) -> int:
    """A near miss: the wrong answers a small model actually gives."""
    return x + rng.choice([-2, -1, 1, 2])


def _response(rng: random.Random, ans: str, right: bool, style: str) -> tuple[str, str, int]:
    """(text, the judge's note on it, score)."""
    if style == "none":
        return "None", "no answer, wrong", 1
    value = ans if right else str(_near(rng, int(ans)))
    note = f"{style} {value} vs {ans}, {'right' if right else 'wrong'}"
    return STYLES[style].format(value), note, (1 if not right else 3 if style == "padded" else 5)


def _ranking(s1: int, s2: int, text_1: str, text_2: str) -> int:
    """1..6 from the two scores; equal scores: the shorter response is slightly better (3 or 4)."""
    d = s1 - s2
    if d:
        return (1 if d >= 3 else 2) if d > 0 else (6 if d <= -3 else 5)
    return 3 if len(text_1) < len(text_2) else 4


def _pair(rng: random.Random) -> tuple[dict, str]:
    """A math question answered twice, and the reasoning a judge should write for it: the question
    worked out the way the policy does it, then each response compared with that result.

    Kinds: right vs wrong, right vs right-but-padded, two right answers in different styles (the
    shorter slightly better), two wrong ones, and no answer at all. Both orders are equally likely.
    """
    q, work, ans = math_problem(rng)
    kind = rng.random()
    if kind < 0.45:
        a, b = (True, rng.choice(["boxed", "words"])), (False, rng.choice(list(STYLES)))
    elif kind < 0.65:
        a, b = (True, rng.choice(["boxed", "words"])), (True, "padded")
    elif kind < 0.85:
        a, b = (True, "boxed"), (True, "words")
    elif kind < 0.95:
        a, b = (False, "boxed"), (False, "words")
    else:
        a, b = (True, rng.choice(list(STYLES))), (False, "none")
    if rng.random() < 0.5:  # response order varies, so position means nothing
        a, b = b, a
    (t1, n1, s1), (t2, n2, s2) = _response(rng, ans, *a), _response(rng, ans, *b)
    pair = {"conversation": [{"role": "user", "content": q}], "response_1": t1, "response_2": t2,
            "score_1": s1, "score_2": s2, "ranking": _ranking(s1, s2, t1, t2)}
    return pair, f"{work}. Response 1: {n1}. Response 2: {n2}."


def generated_preferences(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": f"pref-{seed}-{i}", **_pair(rng)[0]} for i in range(n)]


def _drill_row(prompt: str, notes: list[str]) -> dict:
    """A drill: the notes are the reasoning (where the judge's own notes go), the answer a fixed word."""
    return {"messages": [{"role": "user", "content": prompt},
                         {"role": "assistant", "reasoning_content": ". ".join(notes) + ".", "content": "Done."}]}


def _compare_drill(rng: random.Random) -> dict:
    """One row of number comparisons in the judge's words ("13 vs 13, right. 15 vs 13, wrong."):
    dense practice of the equality test at the heart of every verdict."""
    items = []
    for _ in range(rng.randint(8, 16)):
        ans = rng.randint(-8, 18)
        got = ans if rng.random() < 0.5 else _near(rng, ans)
        items.append(f"{got} vs {ans}, {'right' if got == ans else 'wrong'}")
    return _drill_row("Check each answer against the result.", items)


def _lookup_drill(rng: random.Random) -> dict:
    """Several short responses under numbered headers, each restated in order as the judge notes
    them ("Response 2: boxed 13"): dense practice of finding what a given response says."""
    k = rng.randint(2, 5)
    shown, notes = [], []
    for i in range(1, k + 1):
        style, value = rng.choice(list(STYLES)), rng.randint(-8, 18)
        shown.append(f"### Response {i}\n{STYLES[style].format(value)}")
        notes.append(f"Response {i}: {style} {value}")
    return _drill_row("List what each response answers.\n\n" + "\n\n".join(shown), notes)


def judge_sft_rows(n: int, seed: int, drill_share: float = 0.0) -> list[dict]:
    """Judge-format SFT examples (warm start): the judge prompt, then reasoning and the JSON verdict;
    `drill_share` of the rows are comparison and lookup drills instead (half each)."""
    rng, rows = random.Random(seed), []
    for _ in range(n):
        u = rng.random()
        if u < drill_share:
            rows.append((_compare_drill if u < drill_share / 2 else _lookup_drill)(rng))
            continue
        p, reasoning = _pair(rng)
        gold = Judgement(p["score_1"], p["score_2"], p["ranking"])
        answers = candidate_answer(p["response_1"], False), candidate_answer(p["response_2"], False)
        rows.append({"messages": [*judge_messages(p["conversation"], *answers),
                                  {"role": "assistant", "reasoning_content": reasoning,
                                   "content": format_judgement(gold)}]})
    return rows


def rlhf_tasks(n: int, seed: int) -> list[dict]:
    """Prompts for RLHF (`genrm` environment), each with a reference answer: a group of one (greedy
    validation) is judged against it."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        q, _, ans = math_problem(rng)
        out.append({"id": f"rlhf-{seed}-{i}", "env": "genrm", "messages": [{"role": "user", "content": q}],
                    "reference": f"The answer is {ans}."})
    return out


BUILTIN = {  # builtin:<name> datasets (stages.run.builtin_data)
    "preferences_train": lambda seed: generated_preferences(1000, seed + 11),
    "preferences_heldout": lambda seed: generated_preferences(64, seed + 12),
    "judge_sft": lambda seed: judge_sft_rows(4000, seed + 13, drill_share=0.5),
    "rlhf_train": lambda seed: rlhf_tasks(500, seed + 14),
    "rlhf_heldout": lambda seed: rlhf_tasks(64, seed + 15),
}
