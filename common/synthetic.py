"""Generated default data for the embedded tiny model (no dataset hub at run time).

Small arithmetic and word problems with `<think>` reasoning and `\\boxed{}` answers, reasoning-off
chat, and tool-call conversations: easy enough that a ~3M-parameter model visibly learns them in
minutes on a CPU, and verifiable, so later stages (RLVR, eval) can score the same kind of task.
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


def arithmetic(rng: random.Random, max_operand: int = 20) -> tuple[str, str, str]:
    """(question, reasoning, answer) for a one-step integer problem."""
    a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
    op = rng.choice(["+", "-", "*"])
    val = {"+": a + b, "-": a - b, "*": a * b}[op]
    q = rng.choice(["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "Calculate {a} {op} {b}."]).format(a=a, op=op, b=b)
    return q, f"{a} {op} {b} = {val}", str(val)


def word_problem(rng: random.Random, max_operand: int = 20) -> tuple[str, str, str]:
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
    q, reasoning, ans = math_problem(rng)
    return {"messages": [{"role": "user", "content": q},
                         {"role": "assistant", "reasoning_content": reasoning, "content": f"\\boxed{{{ans}}}"}]}


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
    """The default SFT mix: 70% math with reasoning, 15% reasoning-off chat, 15% tool calls."""
    rng = random.Random(seed)
    makers = [_math_row] * 14 + [_chat_row] * 3 + [_tool_row] * 3
    return [rng.choice(makers)(rng) for _ in range(n)]


BUILTIN = {"sft_default": lambda seed: sft_rows(3000, seed)}
