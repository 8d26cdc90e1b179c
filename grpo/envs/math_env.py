"""Math: the final answer's last `\\boxed{}` checked against the reference with math-verify."""
from __future__ import annotations

import logging
import math
import re

from math_verify import parse, verify

from chat_template.parse import parse_response
from grpo.envs import Environment, Score, register

logging.getLogger("math_verify").setLevel(logging.ERROR)  # the scoring workers enforce the deadline

# Answers whose evaluation could explode are refused before math-verify sees them; the scoring
# workers' deadline is the backstop for anything these rules miss.
MAX_ANSWER_CHARS = 1000
MAX_DIGITS = 10_000  # of a number written as a power
MAX_SYMBOLIC_EXPONENT = 1000  # x^N, (a+b)^N, (9^9)^N (counting the numbers inside the base)
MAX_FACTORIAL = 1000
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def boxed_contents(text: str) -> list[str]:
    """Contents of every complete `\\boxed{...}` (balanced braces), in order."""
    out, start = [], text.find("\\boxed{")
    while start >= 0:
        i, depth = start + len("\\boxed{"), 1
        for j in range(i, len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                out.append(text[i:j])
                break
        start = text.find("\\boxed{", start + 1)
    return out


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}`, or None (also when that last box is never closed)."""
    start = text.rfind("\\boxed{")
    boxes = boxed_contents(text[start:]) if start >= 0 else []
    return boxes[0] if boxes else None


def _group_after(s: str, i: int) -> tuple[str, int]:
    """The operand that starts at s[i] (a {group} or (group), a number, a command or one character)
    and the index after it."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i < len(s) and s[i] in "{(":
        close, depth = {"{": "}", "(": ")"}[s[i]], 0
        for j in range(i, len(s)):
            depth += (s[j] == s[i]) - (s[j] == close)
            if depth == 0:
                return s[i + 1:j], j + 1
        return s[i + 1:], len(s)
    m = _NUMBER.match(s, i) or re.compile(r"\\[a-zA-Z]+|.").match(s, i)
    return (m.group(0), m.end()) if m else ("", i)


def _group_before(s: str, i: int) -> str:
    """The operand that ends just before s[i] (mirror of _group_after)."""
    j = i
    while j > 0 and s[j - 1] == " ":
        j -= 1
    if j > 0 and s[j - 1] in "})":
        opening, depth = {"}": "{", ")": "("}[s[j - 1]], 0
        for k in range(j - 1, -1, -1):
            depth += (s[k] == s[j - 1]) - (s[k] == opening)
            if depth == 0:
                return s[k + 1:j - 1]
        return s[:j - 1]
    m = re.search(r"(\d+(?:\.\d+)?|\\[a-zA-Z]+|.)$", s[:j])
    return m.group(0) if m else ""


def _number(text: str) -> float | None:
    return float(text) if _NUMBER.fullmatch(text.strip()) else None


def too_costly(answer: str) -> str | None:
    """Why evaluating this boxed answer could explode (a huge power, a huge factorial, an exponent
    tower), or None. Conservative: real answers are short and small."""
    if len(answer) > MAX_ANSWER_CHARS:
        return f"answer longer than {MAX_ANSWER_CHARS} characters"
    s = answer.replace("**", "^").replace("\\left", "").replace("\\right", "").replace("\\uparrow", "^")
    for m in re.finditer(r"\^", s):
        (exponent, end), base = _group_after(s, m.end()), _group_before(s, m.start())
        if "^" in exponent or re.search(r"(?<!\\)!", exponent) or "\\exp" in exponent or s[end:].lstrip()[:1] == "^":
            return "exponent tower"
        e, b = _number(exponent), _number(base)
        if e is None:
            continue
        if b is not None and b > 1 and e * math.log10(b) > MAX_DIGITS:
            return f"a power with more than {MAX_DIGITS} digits"
        if b is None and e * math.prod(float(x) for x in _NUMBER.findall(base) or [1]) > MAX_SYMBOLIC_EXPONENT:
            return f"exponent above {MAX_SYMBOLIC_EXPONENT}"
    for m in re.finditer(r"(?<!\\)!", s):
        operand = _group_before(s, m.start())
        if "^" in operand or "!" in operand:
            return "nested factorial or power"
        if any(float(x) > MAX_FACTORIAL for x in _NUMBER.findall(operand)):
            return f"factorial above {MAX_FACTORIAL}!"
    return None


@register
class MathEnv(Environment):
    """Binary reward: 1 when the boxed answer is mathematically equal to `task["answer"]`.

    Only the final answer is read (never the reasoning), and it must be boxed: a correct number
    somewhere in unboxed text is not a false positive.
    """
    name = "math"

    def score(self, task: dict, response: str) -> Score:
        answer = parse_response(response, thinking=task.get("enable_thinking", True)).content
        boxed = last_boxed(answer)
        if boxed is None:
            return Score(0.0, "no \\boxed{} answer", {"boxed": 0.0})
        if why := too_costly(boxed):
            return Score(0.0, f"refused: {why}", {"boxed": 1.0})
        gold = parse(f"${task['answer']}$", parsing_timeout=None)
        pred = parse(f"$\\boxed{{{boxed}}}$", parsing_timeout=None)
        if not gold:
            raise ValueError(f"reference answer {task['answer']!r} does not parse")
        ok = bool(pred) and verify(gold, pred, timeout_seconds=None)
        return Score(1.0 if ok else 0.0, "correct" if ok else f"wrong answer {boxed!r}", {"boxed": 1.0})
