"""RL tasks: one JSONL schema for every environment, and a sampler that keeps fixed domain ratios.

Task row (one JSON object per line):
    {"id": "math-17", "env": "math",
     "messages": [{"role": "user", "content": "What is 3 + 4?"}],   # or "prompt": "What is 3 + 4?"
     "answer": "7",                                                 # verifier metadata, per env
     "tools": [...], "enable_thinking": true}                       # optional
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from chat_template.conversation import ConversationError, normalize


class TaskError(ValueError):
    """A bad task file or row; the message names the file, line and field."""


def load_tasks(path: str | Path, *, default_env: str | None = None, require: tuple[str, ...] = ()) -> list[dict]:
    """Task rows of a JSONL file; `default_env` for rows that name none, `require`: more string
    fields every row must have (e.g. "response" for offline scoring)."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"{path}: no such task file")
    tasks = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskError(f"{where}: invalid JSON ({e.msg})") from None
            if isinstance(row, dict) and default_env:
                row.setdefault("env", default_env)
            if not isinstance(row, dict) or not isinstance(row.get("env"), str):
                raise TaskError(f"{where}: env: missing (each task names its environment)")
            for key in require:
                if not isinstance(row.get(key), str):
                    raise TaskError(f"{where}: {key}: missing (a string)")
            if "messages" not in row:
                if not isinstance(row.get("prompt"), str):
                    raise TaskError(f"{where}: messages: missing (give `messages` or a `prompt` string)")
                row["messages"] = [{"role": "user", "content": row["prompt"]}]
            try:
                row["messages"], row["tools"] = normalize(row["messages"], row.get("tools"))
            except ConversationError as e:
                raise TaskError(f"{where}: {e}") from None
            row.setdefault("id", f"{path.stem}-{n}")
            tasks.append(row)
    if not tasks:
        raise TaskError(f"{path}: no tasks")
    return tasks


def split_counts(ratios: dict[str, float], total: int) -> dict[str, int]:
    """Integer counts proportional to `ratios` summing to `total` (largest remainder)."""
    s = sum(ratios.values())
    exact = {k: v / s * total for k, v in ratios.items()}
    counts = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: (counts[k] - exact[k], k))[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


@dataclass
class TaskSampler:
    """Every batch holds each environment's fixed share; within an environment, tasks come in a
    seeded permutation per epoch. `state()` is the exact data position for resume."""

    by_env: dict[str, list[dict]]
    ratios: dict[str, float]
    seed: int = 0
    position: dict[str, list[int]] = field(default_factory=dict)  # env -> [epoch, index]

    def __post_init__(self):
        missing = [e for e in self.ratios if e not in self.by_env]
        if missing:
            raise TaskError(f"grpo.env_ratios names {missing} but the task files hold {sorted(self.by_env)}")
        for env in self.ratios:
            self.position.setdefault(env, [0, 0])

    def _order(self, env: str, epoch: int) -> list[int]:
        order = list(range(len(self.by_env[env])))
        random.Random(f"{self.seed}-{env}-{epoch}").shuffle(order)
        return order

    def sample(self, n: int, step: int = 0) -> list[dict]:
        out = []
        for env, count in split_counts(self.ratios, n).items():
            for _ in range(count):
                epoch, idx = self.position[env]
                order = self._order(env, epoch)
                out.append(self.by_env[env][order[idx]])
                self.position[env] = [epoch + 1, 0] if idx + 1 >= len(order) else [epoch, idx + 1]
        return out

    def state(self) -> dict:
        return {k: list(v) for k, v in self.position.items()}

    def restore(self, state: dict) -> None:
        self.position = {k: list(v) for k, v in state.items()}

    def stats(self, tasks: list[dict], step: int) -> dict:
        return {}


@dataclass
class CurriculumConfig:
    enabled: bool = False
    profile_samples: int = 4  # responses per task in the profiling pass (the starting checkpoint)
    profile_tasks: int = 0  # tasks profiled per environment (the rest are not used); 0: all
    drop_above: float = 1.0  # tasks whose profiled pass rate reaches this are dropped (always solved)
    start_pass_rate: float = 0.8  # the pass rate the sampler aims at on the first step (easy)...
    end_pass_rate: float = 0.2  # ...and on the last (hard), linearly in between
    width: float = 0.15  # standard deviation of the Gaussian over pass rates


class CurriculumSampler:
    """Easy to hard, with every batch still holding each environment's fixed share.

    Within an environment, tasks are drawn without replacement with weight
    exp(-(pass_rate - target)^2 / (2 width^2)), the target moving from `start_pass_rate` to
    `end_pass_rate` over `total_steps`. Pass rates come from a profiling pass with the starting
    checkpoint; tasks it found always solved were dropped before. Draws are seeded by (seed,
    environment, draw number): `state()` is that number, so a resumed run draws the same tasks.
    """

    def __init__(self, by_env: dict[str, list[dict]], ratios: dict[str, float], pass_rates: dict[str, float],
                 cfg: CurriculumConfig, total_steps: int, seed: int = 0):
        self.by_env = {env: [t for t in tasks if t["id"] in pass_rates] for env, tasks in by_env.items()}
        empty = [e for e in ratios if not self.by_env.get(e)]
        if empty:
            raise TaskError(f"curriculum: no task left for {empty} (none profiled, or all always solved)")
        self.ratios, self.rates, self.cfg, self.total, self.seed = ratios, pass_rates, cfg, total_steps, seed
        self.draws = 0

    def target(self, step: int) -> float:
        progress = min(max(step - 1, 0) / max(self.total - 1, 1), 1.0)
        return self.cfg.start_pass_rate + (self.cfg.end_pass_rate - self.cfg.start_pass_rate) * progress

    def sample(self, n: int, step: int = 0) -> list[dict]:
        target, out = self.target(step), []
        for env, count in split_counts(self.ratios, n).items():
            rng, tasks = random.Random(f"{self.seed}-{env}-{self.draws}"), self.by_env[env]
            weights = [math.exp(-(self.rates[t["id"]] - target) ** 2 / (2 * self.cfg.width ** 2)) + 1e-12
                       for t in tasks]
            keys = sorted(range(len(tasks)), key=lambda i: rng.random() ** (1 / weights[i]), reverse=True)
            out += [tasks[i] for i in (keys * count)[:count]]  # distinct unless the env has fewer tasks
        self.draws += 1
        return out

    def state(self) -> dict:
        return {"draws": self.draws}

    def restore(self, state: dict) -> None:
        self.draws = state["draws"]

    def stats(self, tasks: list[dict], step: int) -> dict:
        """The step's target and the profiled pass rate of the tasks it trained on."""
        return {"curriculum/target_pass_rate": self.target(step),
                "curriculum/sampled_pass_rate": sum(self.rates[t["id"]] for t in tasks) / max(len(tasks), 1)}


def group_by_env(tasks: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for t in tasks:
        out.setdefault(t["env"], []).append(t)
    return out


BUILTIN_TRAIN, BUILTIN_HELDOUT = 500, 64


def builtin_env_tasks(name: str, seed: int) -> list[dict] | None:
    """`<env>_train` / `<env>_heldout`: the default tasks an environment module generates (its
    `generate_tasks(n, seed)`), or None. No held-out task equals a train task (prompt and verifier
    fields); with the toy generators the same prompt may recur with other test values."""
    import sys

    from grpo.envs import REGISTRY, load_modules

    env, _, split = name.rpartition("_")
    gen = getattr(sys.modules[REGISTRY[env].__module__], "generate_tasks", None) if env in load_modules() else None
    if split not in ("train", "heldout") or gen is None:
        return None
    train = gen(BUILTIN_TRAIN, seed + 1)
    if split == "train":
        return train
    key = lambda t: json.dumps({k: v for k, v in t.items() if k != "id"}, sort_keys=True)  # noqa: E731
    seen = {key(t) for t in train}
    return [t for t in gen(BUILTIN_HELDOUT * 4, seed + 2) if key(t) not in seen][:BUILTIN_HELDOUT]

