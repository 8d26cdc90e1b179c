"""Code: the final answer's program must pass every unit test of its task, run in the sandbox.

Task fields (either or both kinds of test):
    "tests":   [{"input": "3 4\\n", "output": "7\\n"}, ...]   stdin -> expected stdout, one run each
    "asserts": ["assert add(3, 4) == 7", ...]                  appended to the program, one run
    "time_limit_s": 10                                          optional, per run (wall and CPU)
The program is the last fenced code block (```python ... ``` or ``` ... ```) of the final answer;
reasoning is never run. Outputs are compared after stripping trailing whitespace on every line and
trailing blank lines. Reward 1 only when every test passes; the first failure is the reason.
"""
from __future__ import annotations

import random
import re
from dataclasses import replace

from chat_template.parse import parse_response
from grpo.envs import Environment, Score, register
from grpo.envs import sandbox

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.S | re.I)


def extract_program(answer: str) -> str | None:
    """The last fenced code block of the answer, or None."""
    blocks = _FENCE.findall(answer)
    return blocks[-1] if blocks else None


def normalize_output(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()).rstrip()


@register
class CodeEnv(Environment):
    name = "code"
    timeout_s = 300.0  # the sandbox bounds every run; this only guards against a stuck scorer

    def __init__(self, wall_s: float = 10.0, memory_mb: int = 1024, max_processes: int = 32,
                 max_output_bytes: int = 1 << 20, allow_unisolated: bool = False):
        self.limits = sandbox.SandboxLimits(wall_s=wall_s, cpu_s=wall_s, memory_mb=memory_mb,
                                            max_processes=max_processes, max_output_bytes=max_output_bytes)
        self.isolate = sandbox.namespaces_available()
        if not self.isolate and not allow_unisolated:
            raise sandbox.SandboxUnavailable(
                "code environment: no namespace sandbox on this machine (root or unprivileged user "
                "namespaces needed); set grpo.env_options.code.allow_unisolated=true only for trusted code")

    def score(self, task: dict, response: str) -> Score:
        tests, asserts = task.get("tests") or [], task.get("asserts") or []
        if not tests and not asserts:
            raise ValueError("code task has neither `tests` nor `asserts`")
        program = extract_program(parse_response(response, thinking=task.get("enable_thinking", True)).content)
        if program is None:
            return Score(0.0, "no code block in the answer", {"has_code": 0.0, "pass_fraction": 0.0})
        limit = float(task.get("time_limit_s", self.limits.wall_s))
        limits = replace(self.limits, wall_s=limit, cpu_s=limit)
        runs = [(f"test {i + 1}/{len(tests)}", program, t.get("input", ""), t["output"]) for i, t in enumerate(tests)]
        if asserts:
            runs.append(("asserts", program + "\n\n" + "\n".join(asserts) + "\n", "", None))
        for passed, (label, source, stdin, expected) in enumerate(runs):
            r = sandbox.run(source, stdin, limits, isolate=self.isolate)
            reason = None
            if not r.ok:
                reason = f"{label}: {r.describe()}"
            elif expected is not None and normalize_output(r.stdout) != normalize_output(expected):
                reason = (f"{label}: wrong output (expected {normalize_output(expected)[:80]!r}, "
                          f"got {normalize_output(r.stdout)[:80]!r})")
            if reason:
                return Score(0.0, reason, {"has_code": 1.0, "pass_fraction": passed / len(runs)})
        return Score(1.0, f"passed {len(runs)}/{len(runs)} runs", {"has_code": 1.0, "pass_fraction": 1.0})


_STDIN = {"sum": lambda a, b: a + b, "difference": lambda a, b: a - b, "product": lambda a, b: a * b,
          "maximum": max}
_FUNCS = {"double": ("twice x", lambda x: 2 * x), "square": ("x squared", lambda x: x * x),
          "inc": ("x plus one", lambda x: x + 1)}


def generate_tasks(n: int, seed: int) -> list[dict]:
    """Tiny programs: read two integers and print a combination (stdin/stdout tests), or write a
    one-line function (assert tests)."""
    rng, out = random.Random(seed), []
    for i in range(n):
        task = {"id": f"code-{seed}-{i}", "env": "code"}
        if rng.random() < 0.5:
            op = rng.choice(sorted(_STDIN))
            pairs = [(rng.randint(-9, 9), rng.randint(-9, 9)) for _ in range(3)]
            prompt = f"Read two integers from one line and print their {op}."
            task["tests"] = [{"input": f"{a} {b}\n", "output": f"{_STDIN[op](a, b)}\n"} for a, b in pairs]
        else:
            name = rng.choice(sorted(_FUNCS))
            what, fn = _FUNCS[name]
            prompt = f"Write a Python function {name}(x) that returns {what}."
            task["asserts"] = [f"assert {name}({x}) == {fn(x)}" for x in rng.sample(range(-9, 10), 3)]
        task["messages"] = [{"role": "user", "content": prompt + " Answer with the code in a ```python block."}]
        out.append(task)
    return out
