"""Environments: verifiable rewards behind one narrow interface, found by name.

    @register
    class MyEnv(Environment):
        name = "my_env"
        def score(self, task: dict, response: str) -> Score: ...

`task` is one JSONL row of the environment's data (see grpo.tasks); `response` is the model's
completion text (after the generation prompt). Environments are plain classes: call them directly
to debug; the stage's Ray actor (`EnvPool`) only scores batches of them in parallel. A user's own
environments live in any importable module that registers them; the RL stages import the modules
listed in `grpo.env_modules`.

Multi-turn environments (tool use) also implement `initial_state` and `step`: after every
assistant turn the rollout calls `step`, which returns the messages to feed back (tool results)
or None to end the episode; `score` then also receives the final state.
"""
from __future__ import annotations

import concurrent.futures as cf
import os
import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Score:
    reward: float
    reason: str = ""  # why: "correct", "wrong answer", "no \\boxed{} answer", "error: ...", "timeout ..."
    info: dict = field(default_factory=dict)  # numeric entries are averaged into metrics as <env>/<key>


class Environment:
    name: str = ""
    timeout_s: float | None = None  # per-sample scoring limit; None: the run's grpo.score_timeout_s
    multi_turn: bool = False
    max_turns: int = 1  # multi-turn: assistant turns per episode (a task's "max_turns" overrides it)
    group_scoring: bool = False  # score_groups gets every group of a step at once (a judge comparing them)

    def score(self, task: dict, response: str) -> Score:
        raise NotImplementedError

    def score_groups(self, groups: list[tuple[dict, list[str]]]) -> list[list[Score]]:
        """Group-scoring environments: one Score per response of each (task, responses) group."""
        raise NotImplementedError

    # -- multi-turn environments only ------------------------------------------------------
    def initial_state(self, task: dict) -> Any:
        return None

    def step(self, task: dict, state: Any, turn: str) -> tuple[list[dict] | None, Any]:
        """After an assistant turn (its generated text): (messages to feed back, new state);
        None as messages ends the episode."""
        return None, state


REGISTRY: dict[str, type[Environment]] = {}
BUILTIN_MODULES = ["grpo.envs.math_env", "grpo.envs.code_env", "grpo.envs.mcqa", "grpo.envs.instruction_following",
                   "grpo.envs.structured_output", "grpo.envs.tool_use"]


def register(cls: type[Environment]) -> type[Environment]:
    if not cls.name:
        raise ValueError(f"{cls.__name__}: an environment needs a `name`")
    REGISTRY[cls.name] = cls
    return cls


def load_modules(modules: list[str] = ()) -> list[str]:
    """Import the built-in environments and `modules` (a user's own, which register themselves);
    returns every registered name."""
    import importlib

    for m in [*BUILTIN_MODULES, *modules]:
        importlib.import_module(m)
    return sorted(REGISTRY)


def make(name: str, **kwargs) -> Environment:
    if name not in REGISTRY and name not in load_modules():
        raise KeyError(f"unknown environment {name!r}; registered: {sorted(REGISTRY)}")
    return REGISTRY[name](**kwargs)


def call_safely(fn, *args, timeout_s: float) -> tuple[Any, str | None]:
    """(fn(*args), None), or (None, reason) when it raised or ran past `timeout_s`.

    The call runs in a thread of its own: a verifier stuck in pure Python cannot be killed, so it
    is abandoned (daemon thread) and never blocks the run. Untrusted code never runs here: the
    code environment runs programs in a process sandbox with its own limits.
    """
    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args)
        except Exception as e:  # noqa: BLE001 - any verifier failure is reported with its reason
            box["error"] = f"error: {type(e).__name__}: {e}"

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        return None, f"timeout after {timeout_s:g}s"
    return box.get("value"), box.get("error")


def score_safely(env: Environment, task: dict, response: str, timeout_s: float = 10.0, *state) -> Score:
    """Never raises and never hangs the run: errors and timeouts become reward 0 with the reason."""
    s, error = call_safely(env.score, task, response, *state, timeout_s=env.timeout_s or timeout_s)
    if error:
        return Score(0.0, error)
    return s if isinstance(s, Score) else Score(0.0, f"error: {env.name}.score returned {type(s).__name__}")


def score_batch(envs: dict[str, Environment], items: list[tuple], timeout_s: float = 10.0,
                workers: int = 0) -> list[Score]:
    """Score (task, response[, state]) items in parallel (`workers` threads; 0: one per core), each
    with the environment its task names. Results keep the order of `items`."""
    def one(item) -> Score:
        env = envs.get(item[0].get("env", ""))
        if env is None:
            return Score(0.0, f"error: no environment {item[0].get('env')!r} in this run")
        return score_safely(env, item[0], item[1], timeout_s, *item[2:])

    with cf.ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return list(pool.map(one, items))


class EnvPool:
    """The environments of a run, scoring batches (and stepping multi-turn episodes); the stage
    runs it as a Ray actor."""

    def __init__(self, names: list[str], timeout_s: float = 10.0, options: dict | None = None,
                 modules: list[str] = (), workers: int = 0):
        load_modules(modules)
        self.envs = {n: make(n, **(options or {}).get(n, {})) for n in names}
        self.timeout_s, self.workers = timeout_s, workers

    def score(self, items: list[tuple]) -> list[Score]:
        return score_batch(self.envs, items, self.timeout_s, self.workers)

    def score_groups(self, groups: list[tuple]) -> list[list[Score]]:
        """(task, responses[, states]) groups -> their Scores; group-scoring environments get all
        their groups in one call (a judge batches every comparison of the step), the rest are
        scored sample by sample. A failing group call gives its samples 0 with the reason."""
        out: list[list[Score]] = [[] for _ in groups]
        by_group_env: dict[str, list[int]] = {}
        flat = []
        for gi, (task, responses, *states) in enumerate(groups):
            env = self.envs.get(task.get("env", ""))
            if env is not None and env.group_scoring:
                by_group_env.setdefault(env.name, []).append(gi)
            else:
                flat += [(gi, (task, r, *(s[k] for s in states))) for k, r in enumerate(responses)]
        for name, idxs in by_group_env.items():
            env = self.envs[name]
            res, error = call_safely(env.score_groups, [groups[i][:2] for i in idxs],
                                     timeout_s=env.timeout_s or self.timeout_s)
            for j, gi in enumerate(idxs):
                n = len(groups[gi][1])
                ok = not error and isinstance(res, list) and len(res) == len(idxs) and len(res[j]) == n
                out[gi] = res[j] if ok else [Score(0.0, error or f"error: {name}.score_groups gave no score")] * n
        scored = score_batch(self.envs, [item for _, item in flat], self.timeout_s, self.workers)
        for (gi, _), s in zip(flat, scored):
            out[gi].append(s)
        return out

    def initial_states(self, tasks: list[dict]) -> list[Any]:
        return [self.envs[t["env"]].initial_state(t) for t in tasks]

    def step(self, items: list[tuple[dict, Any, str]]) -> list[tuple[list[dict] | None, Any, str | None]]:
        """(messages or None, new state, error or None) per (task, state, turn text); an error ends
        that episode."""
        def one(item):
            task, state, turn = item
            env = self.envs[task["env"]]
            out, error = call_safely(env.step, task, state, turn, timeout_s=env.timeout_s or self.timeout_s)
            return (None, state, error) if error else (*out, None)

        with cf.ThreadPoolExecutor(max_workers=self.workers or os.cpu_count() or 1) as pool:
            return list(pool.map(one, items))
