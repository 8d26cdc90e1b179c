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
def _pair(rng: random.Random) -> tuple[dict, str]:
    """A math question answered twice: right vs wrong (5 vs 1), or right and concise vs right
    and padded (5 vs 3); with the reasoning a judge would write."""
    q, _, ans = math_problem(rng)
    say = rng.choice(["The answer is {}.", "\\boxed{{{}}}"]).format  # both answer formats the policy uses
    right = say(ans)
    if rng.random() < 0.6:
        wrong = str(int(ans) + rng.choice([-2, -1, 1, 2]))
        other, s_other, why = say(wrong), 1, f"{wrong}, wrong"
    else:
        other = f"Well, let me see. I think that the answer to this question is {ans}, I believe."
        s_other, why = 3, f"{ans} but padded"
    pair = {"conversation": [{"role": "user", "content": q}], "response_1": right, "response_2": other,
            "score_1": 5, "score_2": s_other, "ranking": 1 if s_other == 1 else 2}
    reasoning = f"The answer is {ans}. Response 1: {ans}, right. Response 2: {why}."
    if rng.random() < 0.5:  # response order varies, so position means nothing
        pair.update(response_1=other, response_2=right, score_1=s_other, score_2=5, ranking=7 - pair["ranking"])
        reasoning = f"The answer is {ans}. Response 1: {why}. Response 2: {ans}, right."
    return pair, reasoning


def generated_preferences(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": f"pref-{seed}-{i}", **_pair(rng)[0]} for i in range(n)]


def judge_sft_rows(n: int, seed: int) -> list[dict]:
    """Judge-format SFT examples (warm start): the judge prompt, then reasoning and the JSON verdict."""
    rng, rows = random.Random(seed), []
    for _ in range(n):
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
    "judge_sft": lambda seed: judge_sft_rows(2000, seed + 13),
    "rlhf_train": lambda seed: rlhf_tasks(500, seed + 14),
    "rlhf_heldout": lambda seed: rlhf_tasks(64, seed + 15),
}
