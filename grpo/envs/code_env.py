"""Code: the final answer's program must pass every unit test of its task, run in the sandbox.

Task fields (either or both kinds of test):
    "tests":   [{"input": "3 4\\n", "output": "7\\n"}, ...]   stdin -> expected stdout, one run each
    "asserts": ["assert add(3, 4) == 7", ...]                  test statements, run by the harness
    "time_limit_s": 10                                          optional, per run (wall and CPU)
The program is the last fenced code block (```python ... ``` or ``` ... ```) of the final answer;
reasoning is never run. Reward 1 only when every test passes; the first failure is the reason.

Neither kind lets the program judge itself. A stdin/stdout test compares the captured stdout here
(after stripping trailing whitespace on every line and trailing blank lines), and an exit status
other than 0 fails it. Assert tests run in grpo/envs/code_harness.py: the program is imported as
module `solution` in a child process, the tests run in the harness's own process and call the
program's functions across a pipe (plain values only: no object that equals anything), and each
outcome is reported with a per-run nonce the program never sees; a test counts as passed only on
that report, so exiting early, exit hooks or killing the harness pass nothing. Each `asserts`
entry is Python statements (usually one `assert`) over the program's top-level names.
"""
from __future__ import annotations

import json
import random
import re
import secrets
from dataclasses import replace
from pathlib import Path

from chat_template.parse import parse_response
from grpo.envs import Environment, Score, register
from grpo.envs import sandbox

HARNESS = Path(__file__).with_name("code_harness.py").read_text()
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
        total = len(tests) + len(asserts)
        for i, t in enumerate(tests):
            r = sandbox.run(program, t.get("input", ""), limits, isolate=self.isolate)
            reason = None if r.ok else r.describe()
            if r.ok and normalize_output(r.stdout) != normalize_output(t["output"]):
                reason = (f"wrong output (expected {normalize_output(t['output'])[:80]!r}, "
                          f"got {normalize_output(r.stdout)[:80]!r})")
            if reason:
                return Score(0.0, f"test {i + 1}/{total}: {reason}", {"has_code": 1.0, "pass_fraction": i / total})
        if asserts:
            passed, reason = self.run_asserts(program, asserts, limits)
            if reason:
                return Score(0.0, f"test {len(tests) + passed + 1}/{total}: {reason}",
                             {"has_code": 1.0, "pass_fraction": (len(tests) + passed) / total})
        return Score(1.0, f"passed {total}/{total} tests", {"has_code": 1.0, "pass_fraction": 1.0})

    def run_asserts(self, program: str, asserts: list[str], limits) -> tuple[int, str | None]:
        """(tests passed before the first failure, its reason or None) from the harness's reports.

        Only lines carrying this run's nonce count: a program that exits, hangs or kills the
        harness has passed nothing after the last test the harness reported.
        """
        nonce = secrets.token_hex(16)
        payload = json.dumps({"nonce": nonce, "tests": list(asserts)}) + "\n"
        r = sandbox.run(HARNESS, payload, limits, isolate=self.isolate, files={"solution.py": program})
        outcomes = {}
        for line in r.stdout.splitlines():
            if line.startswith(nonce + " "):
                try:
                    msg = json.loads(line[len(nonce) + 1:])
                    outcomes.setdefault(msg["test"], (msg["ok"] is True, msg.get("reason", "")))
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by the output cap
        for i in range(len(asserts)):
            ok, reason = outcomes.get(i, (False, ""))
            if not ok:
                return i, reason or (r.describe() if not r.ok else "no report from the test harness")
        return len(asserts), None


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
