"""Generated default data for the embedded tiny model (no dataset hub at run time).

Single-digit addition/subtraction and word problems with `<think>` reasoning, answered in one of
the ANSWER_STYLES; reasoning-off chat; and tool-call conversations. Easy enough that a
~3M-parameter model learns them in two minutes on a CPU (multiplication tables took it far longer),
and verifiable, so later stages (RLVR, eval) score the same kind of task.
"""
from __future__ import annotations

import json
import random

NAMES = ["Alice", "Bob", "Carol", "Dave", "Eve", "Frank", "Grace", "Heidi", "Ivan", "Judy"]
ITEMS = ["apples", "books", "coins", "marbles", "pencils", "cookies", "tickets", "boxes"]
GREETINGS = [("Say hello to {n}.", "Hello, {n}!"), ("Greet {n} politely.", "Good day, {n}."),
             ("What is the name in: 'my friend {n}'?", "{n}"), ("Repeat the word {w}.", "{w}"),
             ("Spell {w} backwards.", "{r}"), ("Write the word {w} in capitals.", "{u}")]
WORDS = ["apple", "river", "stone", "cloud", "green", "light", "music", "table", "water", "house"]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current temperature of a city in Celsius.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"}},
                   "required": ["city"]}}}
CITIES = ["Paris", "Rome", "Oslo", "Lima", "Cairo", "Tokyo", "Quito", "Delhi"]
# How a math answer can look, in the SFT data and in the judge's preference data (genrm.data):
# concise and boxed, in words (no box: the math verifier gives it 0), or boxed inside hedging filler
# (the verifier gives it 1; the judge rates it lower, and RLHF's length control shortens it).
ANSWER_STYLES = {"boxed": "\\boxed{{{}}}", "words": "The answer is {}.",
                 "padded": "Well, let me see. I think that the answer to this question is \\boxed{{{}}}, I believe."}
# Shares of the SFT math answers. Words lead, so the SFT model answers in words when greedy (at 0.4 /
# 0.4 it picked words or padded by chance, run to run); RLVR removes the unboxed answers and the
# larger boxed share, padded, wins: the verbosity that RLHF is there to remove.
ANSWER_SHARES = {"boxed": 0.2, "words": 0.45, "padded": 0.35}


def arithmetic(rng: random.Random, max_operand: int = 9) -> tuple[str, str, str]:
    """(question, reasoning, answer) for a one-step integer problem."""
    a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
    op = rng.choice(["+", "-"])
    val = a + b if op == "+" else a - b
    q = rng.choice(["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "Calculate {a} {op} {b}."]).format(a=a, op=op, b=b)
    return q, f"{a} {op} {b} = {val}", str(val)


def word_problem(rng: random.Random, max_operand: int = 9) -> tuple[str, str, str]:
    n, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(1, max_operand), rng.randint(1, max_operand)
    if rng.random() < 0.5:
        q = f"{n} has {a} {item} and gets {b} more. How many {item} does {n} have now?"
        return q, f"{n} starts with {a} and gets {b}: {a} + {b} = {a + b}", str(a + b)
    a, b = max(a, b), min(a, b)
    q = f"{n} has {a} {item} and gives away {b}. How many {item} are left?"
    return q, f"{n} starts with {a} and gives {b}: {a} - {b} = {a - b}", str(a - b)


def math_problem(rng: random.Random) -> tuple[str, str, str]:
    return (arithmetic if rng.random() < 0.6 else word_problem)(rng)


def _math_row(rng: random.Random) -> dict:
    """Answers in the ANSWER_STYLES mix, as chat data mixes them. The math environment credits only
    `\\boxed{}` answers, so dropping the words style is the first thing RLVR teaches."""
    q, reasoning, ans = math_problem(rng)
    style = rng.choices(list(ANSWER_SHARES), weights=list(ANSWER_SHARES.values()))[0]
    content = ANSWER_STYLES[style].format(ans)
    return {"messages": [{"role": "user", "content": q},
                         {"role": "assistant", "reasoning_content": reasoning, "content": content}]}


def _chat_row(rng: random.Random) -> dict:
    q, a = rng.choice(GREETINGS)
    n, w = rng.choice(NAMES), rng.choice(WORDS)
    fmt = {"n": n, "w": w, "r": w[::-1], "u": w.upper()}
    return {"messages": [{"role": "user", "content": q.format(**fmt)},
                         {"role": "assistant", "content": a.format(**fmt)}]}


def _tool_row(rng: random.Random) -> dict:
    city, temp = rng.choice(CITIES), rng.randint(-5, 35)
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}
    return {"tools": [WEATHER_TOOL], "messages": [
        {"role": "user", "content": f"What is the temperature in {city}?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": json.dumps({"city": city, "temp_c": temp})},
        {"role": "assistant", "content": f"It is {temp} C in {city}."}]}


def sft_rows(n: int, seed: int = 0) -> list[dict]:
    """The default SFT mix: 85% math with reasoning, 10% reasoning-off chat, 5% tool calls
    (tool rows carry a ~250-token tools header, so even 5% is a real share of the tokens)."""
    rng = random.Random(seed)
    makers = [_math_row] * 17 + [_chat_row] * 2 + [_tool_row] * 1
    return [rng.choice(makers)(rng) for _ in range(n)]


def math_tasks(n: int, seed: int, exclude: set[str] | None = None) -> list[dict]:
    """RL tasks for the math environment (grpo.tasks schema); `exclude` drops known questions."""
    rng, out, seen = random.Random(seed), [], set(exclude or ())
    while len(out) < n:
        q, _, ans = math_problem(rng)
        if q in seen:
            continue
        seen.add(q)
        out.append({"id": f"math-{seed}-{len(out)}", "env": "math",
                    "messages": [{"role": "user", "content": q}], "answer": ans})
    return out


def _sft_questions(seed: int) -> set[str]:
    return {r["messages"][0]["content"] for r in sft_rows(3000, seed)}


BUILTIN = {
    "sft_default": lambda seed: sft_rows(3000, seed),
    "math_train": lambda seed: math_tasks(2000, seed + 1),
    # held out: none of these questions occurs in the SFT data or the RL training tasks
    "math_heldout": lambda seed: math_tasks(200, seed + 2, exclude=_sft_questions(seed)
                                            | {t["messages"][0]["content"] for t in math_tasks(2000, seed + 1)}),
}
