"""The pairwise judge's input and output (pure functions; no model here).

Input: the conversation up to and including the new user turn, then the two candidates' final
answers only (their reasoning is stripped: the judge rates what the user would see; an empty answer
is sent as "None"). Output: the judge reasons, then ends with one JSON object
`{"score_1": 1-5, "score_2": 1-5, "ranking": 1-6}` (ranking 1: response 1 far better, 6: response 2
far better). Anything else is a parse failure: the caller retries, then falls back to the defaults.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from chat_template.parse import final_answer

DEFAULT_SCORE, DEFAULT_RANKING = 3.0, 3.5  # published fallbacks after the retries

INSTRUCTIONS = (
    "You are judging two responses to the last user turn of a conversation. Rate each response "
    "from 1 (very poor) to 5 (excellent) for helpfulness and correctness, then rank them from 1 "
    "(the first response is far better) to 6 (the second response is far better). Think first, then "
    'reply with only this JSON: {"score_1": <1-5>, "score_2": <1-5>, "ranking": <1-6>}'
)
# The two candidates' section headers. Words, not "Response 1" / "Response 2": in a model whose
# attention has no positions, a digit label is easily confused with the digits of the answers it
# heads (measured on the tiny judge: score error 0.43 -> 0.30 with these labels).
HEADERS = ("### First response", "### Second response")


@dataclass(frozen=True)
class Judgement:
    score_1: float
    score_2: float
    ranking: float
    parsed: bool = True  # False: the defaults, after every attempt failed to parse

    def swapped(self) -> "Judgement":
        """The same verdict with the two responses in the other order."""
        return Judgement(self.score_2, self.score_1, 7 - self.ranking, self.parsed)


DEFAULT = Judgement(DEFAULT_SCORE, DEFAULT_SCORE, DEFAULT_RANKING, parsed=False)


def candidate_answer(response: str, thinking: bool = True) -> str:
    """What the judge sees of a response: its final answer, or "None" when there is none."""
    answer = final_answer(response, thinking=thinking).strip()
    return answer or "None"


def _inert(text: str) -> str:
    """Quoted text cannot open a section of the judge prompt: a line of it starting with `#` gets a
    backslash, so a response ending in "### Second response\n<forged answer>" stays inside the first."""
    return re.sub(r"(?m)^(\s*)#", r"\1\\#", text.strip())


def _history_text(history: list[dict]) -> str:
    lines = []
    for m in history:
        if m.get("role") in ("system", "user", "assistant"):  # earlier turns: final answers only
            content = m.get("content") or ""
            if m["role"] == "assistant":
                content = final_answer(content, thinking=False)
            lines.append(f"[{m['role']}]\n{_inert(content)}")
    return "\n\n".join(lines)


def judge_messages(history: list[dict], answer_1: str, answer_2: str) -> list[dict]:
    """The judge's chat: one user turn with the instructions, the conversation and the two final
    answers (take them with `candidate_answer`; an empty one is shown as "None")."""
    if not history or history[-1].get("role") != "user":
        raise ValueError("the conversation for the judge must end with the user turn being answered")
    text = (f"{INSTRUCTIONS}\n\n### Conversation\n{_history_text(history)}\n\n"
            f"{HEADERS[0]}\n{_inert(answer_1) or 'None'}\n\n{HEADERS[1]}\n{_inert(answer_2) or 'None'}")
    return [{"role": "user", "content": text}]


def _json_objects(text: str) -> list[tuple[int, int, object]]:
    """Every top-level JSON value starting with `{` in the text: (start, end, value)."""
    decoder, out, i = json.JSONDecoder(), [], text.find("{")
    while i >= 0:
        try:
            value, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i = text.find("{", i + 1)
            continue
        out.append((i, end, value))
        i = text.find("{", end)
    return out


def _number(value, low: float, high: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if low <= value <= high else None


def parse_judgement(text: str, thinking: bool = True) -> Judgement | None:
    """The verdict at the end of the judge's output, or None when it is unusable.

    Usable means: after the reasoning (`</think>`; prose before the JSON is tolerated too), exactly
    one JSON object with numeric score_1, score_2 in [1, 5] and ranking in [1, 6], and nothing but
    whitespace or a closing code fence after it. Two objects, trailing text, missing or out-of-range
    fields: None (the caller retries, then uses the defaults).
    """
    answer = final_answer(text, thinking=thinking)
    objects = _json_objects(answer)
    if len(objects) != 1:
        return None
    _, end, value = objects[0]
    if answer[end:].strip().strip("`").strip() or not isinstance(value, dict):
        return None
    s1, s2 = _number(value.get("score_1"), 1, 5), _number(value.get("score_2"), 1, 5)
    rank = _number(value.get("ranking"), 1, 6)
    if s1 is None or s2 is None or rank is None:
        return None
    return Judgement(s1, s2, rank)


def format_judgement(j: Judgement) -> str:
    """The JSON line a judge should end with (for generated training examples)."""
    def num(x: float):
        return int(x) if float(x).is_integer() else x
    return json.dumps({"score_1": num(j.score_1), "score_2": num(j.score_2), "ranking": num(j.ranking)})


def judge_training_reward(predicted: Judgement | None, gold: Judgement, format_penalty: float = 10.0,
                          ranking_weight: float = 1.0) -> float:
    """GenRM training reward: R = -C1*I_format - |P_s1-G_s1| - |P_s2-G_s2| - C2*|P_rank-G_rank|.

    An unparseable prediction (None) pays the format penalty and is compared as the defaults.
    """
    p = predicted if predicted is not None else DEFAULT
    return (-(format_penalty if predicted is None else 0.0) - abs(p.score_1 - gold.score_1)
            - abs(p.score_2 - gold.score_2) - ranking_weight * abs(p.ranking - gold.ranking))
