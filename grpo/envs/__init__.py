"""Environments: verifiable rewards behind one narrow interface, found by name.

    class MyEnv(Environment):
        name = "my_env"
        def score(self, task: dict, response: str) -> Score: ...
    register(MyEnv)

`task` is one JSONL row of the environment's data (see grpo.tasks); `response` is the model's
completion text (after the generation prompt). A user's own environments live in any importable
module that registers them; the RL stages import the modules listed in `grpo.env_modules`. Environments are plain classes: call them directly
to debug; the Ray actor in grpo.workers only wraps `score_batch`.
"""
from __future__ import annotations

import concurrent.futures as cf
from dataclasses import dataclass, field


@dataclass
class Score:
    reward: float
    reason: str = ""  # why: "correct", "wrong answer", "no \\boxed{} answer", "error: ...", "timeout ..."
    info: dict = field(default_factory=dict)  # numeric entries are averaged into metrics as <env>/<key>


class Environment:
    name: str = ""

    def score(self, task: dict, response: str) -> Score:
        raise NotImplementedError


REGISTRY: dict[str, type[Environment]] = {}


def register(cls: type[Environment]) -> type[Environment]:
    if not cls.name:
        raise ValueError(f"{cls.__name__}: an environment needs a `name`")
    REGISTRY[cls.name] = cls
    return cls


def load_modules(modules: list[str] = ()) -> list[str]:
    """Import the built-in environments and `modules` (a user's own, which register themselves);
    returns every registered name."""
    import importlib

    from grpo.envs import math_env  # noqa: F401  (registers itself)

    for m in modules:
        importlib.import_module(m)
    return sorted(REGISTRY)


def make(name: str, **kwargs) -> Environment:
    if name not in REGISTRY and name not in load_modules():
        raise KeyError(f"unknown environment {name!r}; registered: {sorted(REGISTRY)}")
    return REGISTRY[name](**kwargs)


_POOL = cf.ThreadPoolExecutor(max_workers=4, thread_name_prefix="env-score")


def score_safely(env: Environment, task: dict, response: str, timeout_s: float = 10.0) -> Score:
    """Never raises and never hangs the run: errors and timeouts become reward 0 with the reason.

    (A verifier stuck in pure Python cannot be killed from a thread; it is abandoned, and untrusted
    code never runs here: the code environment has its own process sandbox.)
    """
    fut = _POOL.submit(env.score, task, response)
    try:
        s = fut.result(timeout=timeout_s)
        return s if isinstance(s, Score) else Score(0.0, f"error: {env.name}.score returned {type(s).__name__}")
    except cf.TimeoutError:
        return Score(0.0, f"timeout after {timeout_s:g}s")
    except Exception as e:  # noqa: BLE001 - any verifier failure is a 0 reward, logged with its reason
        return Score(0.0, f"error: {type(e).__name__}: {e}")


def score_batch(envs: dict[str, Environment], items: list[tuple[dict, str]], timeout_s: float = 10.0) -> list[Score]:
    """Score (task, response) pairs, each with the environment its task names."""
    out = []
    for task, response in items:
        env = envs.get(task.get("env", ""))
        out.append(score_safely(env, task, response, timeout_s) if env is not None
                   else Score(0.0, f"error: no environment {task.get('env')!r} in this run"))
    return out


class EnvPool:
    """The environments of a run, scoring batches; the stage runs it as a Ray actor."""

    def __init__(self, names: list[str], timeout_s: float = 10.0, options: dict | None = None,
                 modules: list[str] = ()):
        load_modules(modules)
        self.envs = {n: make(n, **(options or {}).get(n, {})) for n in names}
        self.timeout_s = timeout_s

    def score(self, items: list[tuple[dict, str]]) -> list[Score]:
        return score_batch(self.envs, items, self.timeout_s)
