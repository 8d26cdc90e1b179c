"""Multiple choice: the final answer's letter checked against `task["answer"]`.

Extraction never guesses: a letter counts only when boxed or written in a strict final-answer line,
so the article "A" in a sentence, or a letter discussed mid-text, is no answer at all.
"""
from __future__ import annotations

import random
import re

from chat_template.parse import parse_response
from grpo.envs import Environment, Score, register
from grpo.envs.math_env import boxed_contents

LETTERS = "ABCDEFGHIJ"  # at most 10 choices
_LETTER = r"(?:\(([a-z])\)|([a-z]))\.?"  # "B", "(B)", "B.", "(B)."
_BOX_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\{(.*)\}", re.S)  # \boxed{\text{B}}
# A whole last line: "Answer: B", "The answer is (B).", "Final answer: b", "(B)", "B", "B.".
_FINAL_LINE = re.compile(r"(?:(?:the\s+)?(?:final\s+)?answer(?:\s+is)?(?:\s*:\s*|\s+))?" + _LETTER, re.I | re.A)


def _find_letter(text: str) -> str | None:
    """The answer letter (upper case, any of A-Z), not yet checked against the number of choices."""
    for box in reversed(boxed_contents(text)):  # the last box that holds a letter; `\boxed{42}` holds none
        wrapped = _BOX_WRAP.fullmatch(box.strip())
        m = re.fullmatch(_LETTER, (wrapped.group(1) if wrapped else box).strip(), re.I | re.A)
        if m:
            return (m.group(1) or m.group(2)).upper()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    m = _FINAL_LINE.fullmatch(lines[-1].replace("*", "").strip()) if lines else None  # "**B**" as "B"
    return (m.group(1) or m.group(2)).upper() if m else None


def extract_choice(text: str, n_choices: int | None = None) -> str | None:
    """The answer letter of `text`, or None when there is none or it is beyond the choices."""
    letter = _find_letter(text)
    return letter if letter and letter in LETTERS[: n_choices or len(LETTERS)] else None


@register
class MCQAEnv(Environment):
    """Binary reward: 1 when the extracted letter equals `task["answer"]` (a letter A-J)."""
    name = "mcqa"

    def score(self, task: dict, response: str) -> Score:
        valid = LETTERS[: len(task["choices"]) if task.get("choices") else len(LETTERS)]
        gold = str(task.get("answer", "")).strip().upper()
        if len(gold) != 1 or gold not in valid:
            raise ValueError(f"task {task.get('id')!r}: answer must be one letter of {valid[0]}-{valid[-1]}, "
                             f"got {task.get('answer')!r}")
        answer = parse_response(response, thinking=task.get("enable_thinking", True)).content
        letter = _find_letter(answer)
        if letter is None:
            return Score(0.0, "no answer letter found", {"answered": 0.0})
        if letter not in valid:
            return Score(0.0, f"invalid answer letter {letter!r} (choices {valid[0]}-{valid[-1]})", {"answered": 1.0})
        if letter != gold:
            return Score(0.0, f"wrong answer {letter!r} (expected {gold!r})", {"answered": 1.0})
        return Score(1.0, "correct", {"answered": 1.0})


_WORDS = {"fruit": ["apple", "banana", "pear", "grape", "cherry"], "animal": ["dog", "cat", "horse", "cow", "fish"],
          "color": ["red", "blue", "green", "yellow", "purple"]}


def generate_tasks(n: int, seed: int) -> list[dict]:
    """Toy questions a tiny model can learn (single-digit sums, "which is a fruit?"), 4 options each,
    with the correct letter uniformly placed."""
    rng, rows = random.Random(seed), []
    for i in range(n):
        if rng.random() < 0.5:
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            question, right = f"What is {a} + {b}?", str(a + b)
            wrong = [str(x) for x in rng.sample([x for x in range(19) if x != a + b], 3)]
        else:
            kind = rng.choice(sorted(_WORDS))
            question, right = f"Which is a{'n' if kind[0] in 'aeiou' else ''} {kind}?", rng.choice(_WORDS[kind])
            wrong = rng.sample([w for k, ws in sorted(_WORDS.items()) if k != kind for w in ws], 3)
        pos = rng.randrange(4)
        choices = wrong[:pos] + [right] + wrong[pos:]
        options = "".join(f"{LETTERS[j]}. {c}\n" for j, c in enumerate(choices))
        prompt = f"{question}\n{options}Answer with the letter in \\boxed{{}}."
        rows.append({"id": f"mcqa-{seed}-{i}", "env": "mcqa", "messages": [{"role": "user", "content": prompt}],
                     "choices": choices, "answer": LETTERS[pos]})
    return rows
