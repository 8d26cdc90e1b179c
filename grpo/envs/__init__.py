"""Environments: verifiable rewards behind one narrow interface, found by name.

    @register
    class MyEnv(Environment):
        name = "my_env"
        def score(self, task: dict, response: str) -> Score: ...

`task` is one JSONL row of the environment's data (see grpo.tasks); `response` is the model's
completion text (after the generation prompt). Environments are plain classes: call them directly
to debug; `EnvPool` (the stage's Ray actor) scores batches of them in worker processes under hard
deadlines (grpo/envs/workers.py), so a verifier stuck on hostile input is killed. A user's own
environments live in any importable module that registers them; the RL stages import the modules
listed in `grpo.env_modules`.

Multi-turn environments (tool use) also implement `initial_state` and `step`: after every
assistant turn the rollout calls `step`, which returns the messages to feed back (tool results)
or None to end the episode; `score` then also receives the final state.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from grpo.envs.workers import Call, EnvSpec, WorkerPool

DEFAULT_TIMEOUT_S = 10.0  # per-sample scoring deadline (grpo.score_timeout_s, the scoring CLI's --timeout-s)


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


def _as_score(value, error: str | None) -> Score:
    return Score(0.0, error) if error else value


class EnvPool:
    """The environments of a run, scoring batches (and stepping multi-turn episodes); the stage
    runs it as a Ray actor, the scoring CLI in its own process.

    Every per-sample call (`score`, `step`) runs in a worker process of `workers` (0: one per
    core) under a hard deadline (the environment's `timeout_s`, else `timeout_s`): a verifier that
    raises or runs past it gives reward 0 with the reason, its worker is killed and replaced, and
    nothing is left running. Group-scoring environments (a judge) run here: their work happens in
    judge servers whose clients bound every request themselves.
    """

    def __init__(self, names: list[str], timeout_s: float = DEFAULT_TIMEOUT_S, options: dict | None = None,
                 modules: list[str] = (), workers: int = 0):
        load_modules(modules)
        options = options or {}
        self.envs = {n: make(n, **options.get(n, {})) for n in names}
        self.timeout_s = timeout_s
        specs = {n: EnvSpec.of(type(e), options.get(n, {})) for n, e in self.envs.items() if not e.group_scoring}
        self.pool = WorkerPool(specs, workers or len(os.sched_getaffinity(0))) if specs else None

    def _calls(self, method: str, items: list[tuple]) -> list[Call]:
        return [Call(t.get("env", ""), method, (t, *rest), self.envs[t["env"]].timeout_s or self.timeout_s)
                for t, *rest in items]

    def score(self, items: list[tuple], on_result=None) -> list[Score]:
        """Score (task, response[, state]) items; results keep the order of `items`, and
        `on_result(i, score)` is called as each one is done."""
        out: list = [None] * len(items)
        remote = []
        for i, item in enumerate(items):
            env = self.envs.get(item[0].get("env", ""))
            if env is None:
                out[i] = Score(0.0, f"error: no environment {item[0].get('env')!r} in this run")
            elif env.group_scoring:
                out[i] = self.score_groups([(item[0], [item[1]], *([s] for s in item[2:]))])[0][0]
            else:
                remote.append(i)
                continue
            if on_result:
                on_result(i, out[i])
        if remote:
            def done(k, value, error):
                out[remote[k]] = _as_score(value, error)
                if on_result:
                    on_result(remote[k], out[remote[k]])
            self.pool.run(self._calls("score", [items[i] for i in remote]), done)
        return out

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
            try:
                res, error = self.envs[name].score_groups([groups[i][:2] for i in idxs]), None
            except Exception as e:  # noqa: BLE001 - a failing judge costs this step's rewards, not the run
                res, error = None, f"error: {type(e).__name__}: {e}"
            for j, gi in enumerate(idxs):
                n = len(groups[gi][1])
                ok = not error and isinstance(res, list) and len(res) == len(idxs) and len(res[j]) == n
                out[gi] = res[j] if ok else [Score(0.0, error or f"error: {name}.score_groups gave no score")] * n
        for (gi, _), s in zip(flat, self.score([item for _, item in flat])):
            out[gi].append(s)
        return out

    def initial_states(self, tasks: list[dict]) -> list[Any]:
        return [self.envs[t["env"]].initial_state(t) for t in tasks]

    def step(self, items: list[tuple[dict, Any, str]]) -> list[tuple[list[dict] | None, Any, str | None]]:
        """(messages or None, new state, error or None) per (task, state, turn text); an error ends
        that episode."""
        results = self.pool.run(self._calls("step", items))
        return [(None, item[1], error) if error else (*value, None) for item, (value, error) in zip(items, results)]

    def worker_pids(self) -> list[int]:
        return self.pool.pids() if self.pool else []

    def close(self) -> None:
        if self.pool:
            self.pool.close()

    def __enter__(self) -> "EnvPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
