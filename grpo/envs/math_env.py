"""Math: the final answer's last `\\boxed{}` checked against the reference with math-verify."""
from __future__ import annotations

import logging

from chat_template.parse import parse_response
from grpo.envs import Environment, Score, register

logging.getLogger("math_verify").setLevel(logging.ERROR)  # timeouts are enforced by score_safely


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


@register
class MathEnv(Environment):
    """Binary reward: 1 when the boxed answer is mathematically equal to `task["answer"]`.

    Only the final answer is read (never the reasoning), and it must be boxed: a correct number
    somewhere in unboxed text is not a false positive.
    """
    name = "math"

    def score(self, task: dict, response: str) -> Score:
        from math_verify import parse, verify

        answer = parse_response(response, thinking=task.get("enable_thinking", True)).content
        boxed = last_boxed(answer)
        if boxed is None:
            return Score(0.0, "no \\boxed{} answer", {"boxed": 0.0})
        gold = parse(f"${task['answer']}$", parsing_timeout=None)
        pred = parse(f"$\\boxed{{{boxed}}}$", parsing_timeout=None)
        if not gold:
            raise ValueError(f"reference answer {task['answer']!r} does not parse")
        ok = bool(pred) and verify(gold, pred, timeout_seconds=None)
        return Score(1.0 if ok else 0.0, "correct" if ok else f"wrong answer {boxed!r}", {"boxed": 1.0})
