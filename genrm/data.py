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

from common.synthetic import ANSWER_STYLES, math_problem
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
# A response to a generated math question is in one of the policy's answer styles, or has no answer.
# The rubric: right and boxed 5 (the format the math tasks ask for), right in words 4, right but
# padded 3, wrong or no answer 1; the ranking follows the score gap, and equal scores are a tie (3.5).
STYLES = ANSWER_STYLES
SCORES = {"boxed": 5, "words": 4, "padded": 3}
RANKING_BY_GAP = {4: 1, 3: 1, 2: 2, 1: 3, 0: 3.5, -1: 4, -2: 5, -3: 6, -4: 6}
ORDINALS = ("First", "Second", "Third")  # the judge's names for the responses


def _near(rng: random.Random, x: int) -> int:
    """A near miss: the wrong answers a small model actually gives."""
    return x + rng.choice([-2, -1, 1, 2])


def _response(rng: random.Random, ans: str, right: bool, style: str) -> tuple[str, str, str, int]:
    """(text, what the judge notes it says, the judge's check of it against the result, score)."""
    if style == "none":
        return "None", "none", "none, wrong, 1", 1
    value = ans if right else str(_near(rng, int(ans)))
    score = SCORES[style] if right else 1
    return STYLES[style].format(value), f"{style} {value}", f"{style} {value}, {'right' if right else 'wrong'}, {score}", score


def _pair(rng: random.Random) -> tuple[dict, str]:
    """A math question answered twice, and the reasoning a judge should write for it.

    The reasoning first notes what each response says, the second one first: a model whose
    attention has no positions finds the last answer of the prompt by recency, and then the first
    as the other one (first-to-last, it often wrote one response's number for both). Then the
    question worked out the way the policy does it, each response checked against that result and
    scored, and the ranking. A check ("First: words 13, right, 4") decides right after the number it
    checks, against the one number that follows "= ": both are easy to find without positions
    ("15 vs 13, wrong" was not: the checked number sat among many others). Kinds: right vs wrong, right vs padded, boxed vs words, two wrong
    ones, an answer vs none, and the same right answer twice (a policy's group is full of repeats);
    both orders equally likely.
    """
    q, work, ans = math_problem(rng)
    kind = rng.random()
    if kind < 0.35:
        a, b = (True, rng.choice(["boxed", "words"])), (False, rng.choice(list(STYLES)))
    elif kind < 0.55:
        a, b = (True, rng.choice(["boxed", "words"])), (True, "padded")
    elif kind < 0.70:
        a, b = (True, "boxed"), (True, "words")
    elif kind < 0.80:
        a, b = (False, rng.choice(list(STYLES))), (False, rng.choice(list(STYLES)))
    elif kind < 0.90:
        a, b = (rng.random() < 0.5, rng.choice(list(STYLES))), (False, "none")
    else:  # the same answer twice, as a policy's group often has it
        a = b = (True, rng.choice(list(STYLES)))
    if rng.random() < 0.5:  # response order varies, so position means nothing
        a, b = b, a
    (t1, say1, check1, s1), (t2, say2, check2, s2) = _response(rng, ans, *a), _response(rng, ans, *b)
    rank = RANKING_BY_GAP[s1 - s2]
    pair = {"conversation": [{"role": "user", "content": q}], "response_1": t1, "response_2": t2,
            "score_1": s1, "score_2": s2, "ranking": rank}
    # No period after the ranking: the JSON copies it, and "3.5" must not read like "3" + "."
    return pair, f"Second: {say2}. First: {say1}. {work}. First: {check1}. Second: {check2}. Ranking {rank:g}"


def generated_preferences(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": f"pref-{seed}-{i}", **_pair(rng)[0]} for i in range(n)]


def _drill_row(prompt: str, notes: list[str]) -> dict:
    """A drill: the notes are the reasoning (where the judge's own notes go), the answer a fixed word."""
    return {"messages": [{"role": "user", "content": prompt},
                         {"role": "assistant", "reasoning_content": ". ".join(notes) + ".", "content": "Done."}]}


def _compare_drill(rng: random.Random) -> dict:
    """A sum worked out, then candidate answers checked against it in the judge's words ("8 + 5 = 13.
    15, wrong. 13, right."): dense practice of the equality test at the heart of every verdict, in
    the judge's own layout: the candidate just written, the result the one number after "= "."""
    a, b, op = rng.randint(0, 9), rng.randint(0, 9), rng.choice("+-")
    ans = a + b if op == "+" else a - b
    items = [f"{a} {op} {b} = {ans}"]
    for _ in range(rng.randint(12, 20)):
        got = ans if rng.random() < 0.5 else _near(rng, ans)
        items.append(f"{got}, {'right' if got == ans else 'wrong'}")
    return _drill_row("Check each answer against the result.", items)


def _lookup_drill(rng: random.Random) -> dict:
    """Several short responses under headers, each restated as the judge notes them, last to first
    ("Second: boxed 13. First: boxed 12"): dense practice of finding what a given response says.
    Mostly in one style: two answers that differ only in their number are where the judge, finding
    a response by its header, wrote the other one's number for both (nearly all of its errors)."""
    k = rng.randint(2, 3)
    shown, notes = [], []
    same = rng.choice(list(STYLES)) if rng.random() < 0.6 else None
    for name in ORDINALS[:k]:
        style, value = same or rng.choice([*STYLES, "none"]), rng.randint(-8, 18)
        text, say, _, _ = _response(rng, str(value), True, style)
        shown.append(f"### {name} response\n{text}")
        notes.append(f"{name}: {say}")
    return _drill_row("List what each response answers.\n\n" + "\n\n".join(shown), notes[::-1])


def _arithmetic_drill(rng: random.Random) -> dict:
    """One row of the single-digit sums and differences the questions ask ("8 + 5 = 13"): the
    judge's own arithmetic must hold up next to two candidates' near-miss numbers."""
    items = []
    for _ in range(rng.randint(8, 16)):
        a, b, op = rng.randint(0, 9), rng.randint(0, 9), rng.choice("+-")
        items.append(f"{a} {op} {b} = {a + b if op == '+' else a - b}")
    return _drill_row("Compute each.", items)


DRILLS = {"compare": _compare_drill, "lookup": _lookup_drill, "arithmetic": _arithmetic_drill}


def judge_sft_rows(n: int, seed: int, drills: dict[str, float] | None = None) -> list[dict]:
    """Judge-format SFT examples (warm start): the judge prompt, then reasoning and the JSON verdict;
    `drills` maps a drill kind (DRILLS) to the share of rows that are that drill instead."""
    rng, rows, drills = random.Random(seed), [], drills or {}
    for _ in range(n):
        u = rng.random()
        for kind, share in drills.items():
            if u < share:
                rows.append(DRILLS[kind](rng))
                break
            u -= share
        else:
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
    "judge_sft": lambda seed: judge_sft_rows(4000, seed + 13, {"compare": 0.3, "lookup": 0.2, "arithmetic": 0.1}),
    "rlhf_train": lambda seed: rlhf_tasks(500, seed + 14),
    "rlhf_heldout": lambda seed: rlhf_tasks(64, seed + 15),
}
