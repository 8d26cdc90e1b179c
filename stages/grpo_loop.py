"""The synchronous GRPO loop shared by the RL stages (rlvr, genrm, rlhf).

Ray topology (all on one machine by default, or on the cluster at $RAY_ADDRESS):
  rollout workers  N actors, each owning a vLLM engine (or HF generate), serving the policy
  policy trainer   grpo.trainer.workers actors owning the weights and the optimizer (FSDP2 when > 1)
  reference policy as many actors again, only when grpo.loss.kl_coef > 0
  environments     1 actor scoring batches (verifiers, judges)

One step = sample prompts (fixed env ratios) -> generate G responses each -> score -> advantages
-> trainer (and reference) log-probs -> policy update -> refit the rollout engines.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from chat_template.render import continuation_ids, prompt_ids
from common import ray_utils
from common.models import load_tokenizer
from grpo.algorithm import PolicyLossConfig, group_advantages, zero_variance_groups
from grpo.envs import DEFAULT_TIMEOUT_S, REGISTRY, EnvPool, Score, load_modules, make
from grpo.multiturn import run_episodes
from grpo.rollout import SamplingConfig, backend_class
from grpo.tasks import CurriculumConfig, CurriculumSampler, TaskError, TaskSampler, group_by_env, load_tasks
from grpo.trainer import OptimConfig, PolicyTrainer, build_batch
from stages import checkpoint as ckpt
from stages.cli import UserError
from stages.lineage import check_experiment_tokenizer, data_record, resolve_parent
from stages.metrics import read_metrics
from stages.run import StageRun, builtin_data

log = logging.getLogger("stages.grpo")


@dataclass
class RolloutSettings:
    backend: str = "vllm"  # vllm | hf (explicit: a missing vLLM is an error, not a fallback)
    workers: int = 1
    max_model_len: int = 2048
    gpus_per_worker: float = 0.0
    # object_store: rank 0's full weights go through Ray's object store (works everywhere);
    # broadcast: a process group of their own from trainer rank 0 to the engines (NCCL on GPU, gloo on CPU).
    refit: str = "object_store"


@dataclass
class TrainerSettings:
    workers: int = 1  # policy (and reference) ranks; more than one shards the model with FSDP2
    gpus_per_worker: float = 0.0


@dataclass
class GRPOConfig:
    max_steps: int = 20
    prompts_per_step: int = 16  # recipe: 128
    group_size: int = 8  # recipe: 16
    advantage: str = "loo"  # loo (recipe) | grpo
    overlong_filtering: bool = True  # truncated responses get no loss
    dynamic_sampling: bool = False  # replace zero-variance groups with fresh prompts...
    max_resample_rounds: int = 2  # ...at most this many extra generation rounds per step
    enable_thinking: bool = True
    env_ratios: dict[str, float] = field(default_factory=lambda: {"math": 1.0})
    env_modules: list[str] = field(default_factory=list)  # modules that register more environments
    env_options: dict[str, Any] = field(default_factory=dict)  # env name -> its constructor options
    score_workers: int = 0  # scoring worker processes of the environment actor; 0: one per CPU core
    train_tasks: list[str] = field(default_factory=lambda: ["builtin:math_train"])
    val_tasks: list[str] = field(default_factory=lambda: ["builtin:math_heldout"])
    val_every: int = 10
    val_size: int = 64  # held-out tasks per environment
    val_max_new_tokens: int = 64
    score_timeout_s: float = DEFAULT_TIMEOUT_S  # per-sample deadline; a verifier past it is killed
    ray_address: Optional[str] = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: PolicyLossConfig = field(default_factory=PolicyLossConfig)
    rollout: RolloutSettings = field(default_factory=RolloutSettings)
    trainer: TrainerSettings = field(default_factory=TrainerSettings)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)


class PhaseTimer:
    def __init__(self):
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        yield
        self.times[f"time/{name}_s"] = self.times.get(f"time/{name}_s", 0.0) + time.perf_counter() - t


@dataclass
class GRPORun:
    cfg: object
    g: GRPOConfig
    tok: object
    trainer: ray_utils.ActorGroup
    reference: ray_utils.ActorGroup | None
    workers: list
    envs: object
    sampler: TaskSampler | CurriculumSampler
    val_tasks: list[dict]
    files: list[str]  # task files, for the lineage record
    multi_turn: dict[str, int] = field(default_factory=dict)  # multi-turn env name -> default max turns
    val_metrics: Any = None  # (val tasks, their scores) -> more validation metrics (a stage's own)
    weight_specs: list | None = None  # set when refitting by broadcast

    # ------------------------------------------------------------------ phases
    def prompts(self, tasks: list[dict]) -> list[list[int]]:
        return [prompt_ids(self.tok, t["messages"], t.get("tools"),
                           enable_thinking=t.get("enable_thinking", self.g.enable_thinking)) for t in tasks]

    def generate(self, tasks: list[dict], n: int, sampling: SamplingConfig, seed: int) -> list[list]:
        """n samples per task: single-turn prompts in one batch, multi-turn tasks as episodes."""
        groups: list = [None] * len(tasks)
        multi = [i for i, t in enumerate(tasks) if t["env"] in self.multi_turn]
        single = [i for i in range(len(tasks)) if i not in set(multi)]
        if single:
            for i, grp in zip(single, self.generate_ids(self.prompts([tasks[i] for i in single]), n, sampling, seed)):
                groups[i] = grp
        if multi:
            seeds = itertools.count(seed + 7919, 7919)
            episodes = run_episodes(
                [tasks[i] for i in multi], self.prompts([tasks[i] for i in multi]), n,
                generate=lambda ps: [grp[0] for grp in self.generate_ids(ps, 1, sampling, next(seeds))],
                initial_states=lambda ts: ray_utils.get(self.envs.initial_states.remote(ts)),
                step=lambda items: ray_utils.get(self.envs.step.remote(items)),
                feed_back=lambda t, msgs: continuation_ids(self.tok, msgs, t.get("tools"), enable_thinking=t.get(
                    "enable_thinking", self.g.enable_thinking)),
                decode=self.decode, max_turns=lambda t: t.get("max_turns", self.multi_turn[t["env"]]),
                max_len=self.g.rollout.max_model_len, max_new_tokens=sampling.max_new_tokens)
            for i, grp in zip(multi, episodes):
                groups[i] = grp
        return groups

    def generate_ids(self, prompts: list[list[int]], n: int, sampling: SamplingConfig, seed: int) -> list[list]:
        """Prompts split round-robin over the rollout workers, generated in parallel."""
        k = len(self.workers)
        parts = ray_utils.get([w.generate.remote(prompts[i::k], n, sampling, seed + i * 100_003)
                               for i, w in enumerate(self.workers)])
        groups: list = [None] * len(prompts)
        for i, part in enumerate(parts):
            groups[i::k] = part
        return groups

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    def score(self, tasks: list[dict], groups: list[list]) -> tuple[torch.Tensor, list]:
        """Scores of every sample; a multi-turn episode is scored with its final state, and one whose
        environment failed mid-episode gets 0 with that error."""
        flat = [(t, s) for t, grp in zip(tasks, groups) for s in grp]
        batch = [(t, [self.decode(s.response_ids) for s in grp],
                  *(([s.env_state for s in grp],) if t["env"] in self.multi_turn else ()))
                 for t, grp in zip(tasks, groups)]
        scored = [s for grp in ray_utils.get(self.envs.score_groups.remote(batch)) for s in grp]
        scores = [Score(0.0, s.env_error) if s.env_error else sc for (_, s), sc in zip(flat, scored)]
        for (t, _), s in zip(flat, scores):
            if s.reason.startswith(("error", "timeout")):
                log.warning("env %s task %s: %s (reward 0)", t.get("env"), t.get("id"), s.reason)
        rewards = torch.tensor([s.reward for s in scores], dtype=torch.float32).view(len(groups), -1)
        return rewards, scores

    def refit(self) -> None:
        if self.weight_specs is not None:
            ray_utils.get(self.trainer.call("broadcast_weights") +
                          [w.receive_weights.remote(self.weight_specs) for w in self.workers])
            return
        weights = self.trainer.call("refit_weights")  # object refs: rank 0's goes trainer -> workers directly
        ray_utils.get([w.update_weights.remote(weights[0]) for w in self.workers] + weights[1:])


def collect(run: GRPORun, step: int, timer: PhaseTimer):
    """Sample prompts and their groups; with dynamic sampling, swap zero-variance groups for fresh ones."""
    g = run.g
    tasks = run.sampler.sample(g.prompts_per_step, step)
    with timer("generate"):
        groups = run.generate(tasks, g.group_size, g.sampling, seed=step * 1_000_003)
    with timer("score"):
        rewards, scores = run.score(tasks, groups)
    rounds = 0
    while g.dynamic_sampling and rounds < g.max_resample_rounds and zero_variance_groups(rewards).any():
        rounds += 1
        dead = zero_variance_groups(rewards).nonzero().flatten().tolist()
        extra = run.sampler.sample(len(dead), step)
        with timer("generate"):
            new = run.generate(extra, g.group_size, g.sampling, seed=step * 1_000_003 + rounds * 7919)
        with timer("score"):
            new_r, new_s = run.score(extra, new)
        for j, i in enumerate(dead):
            tasks[i], groups[i], rewards[i] = extra[j], new[j], new_r[j]
            scores[i * g.group_size:(i + 1) * g.group_size] = new_s[j * g.group_size:(j + 1) * g.group_size]
    return tasks, groups, rewards, scores, rounds


def grpo_step(run: GRPORun, step: int) -> dict:
    """One synchronous GRPO step; returns its metrics."""
    g, timer = run.g, PhaseTimer()
    tasks, groups, rewards, scores, rounds = collect(run, step, timer)
    samples = [s for grp in groups for s in grp]
    with timer("advantages"):
        adv = group_advantages(rewards, g.advantage)
        dead = zero_variance_groups(rewards).repeat_interleave(g.group_size)
        trained = [not d and not (g.overlong_filtering and s.truncated) for d, s in zip(dead.tolist(), samples)]
        batch = build_batch(samples, adv.flatten().tolist(), trained, run.tok.pad_token_id)
    with timer("logprobs"):  # the reference's; the policy's old log-probs come from the update's own forward
        ref = torch.cat(ray_utils.get(run.reference.call("logprobs", batch))) if run.reference is not None else None
    with timer("update"):
        update = ray_utils.get(run.trainer.call("update", batch, None, ref))[0]
    with timer("refit"):
        run.refit()
    gen_tokens = sum(len(s.response_ids) for s in samples)
    tasks_hash = hashlib.sha1(",".join(str(t["id"]) for t in tasks).encode()).hexdigest()[:12]
    return {**update, **reward_metrics(tasks, rewards, scores, samples), **run.sampler.stats(tasks, step),
            "resample_rounds": rounds, "tasks_hash": tasks_hash,
            "zero_variance_fraction": float(zero_variance_groups(rewards).float().mean()),
            "gen_tokens_per_s": gen_tokens / max(timer.times["time/generate_s"], 1e-9), **timer.times,
            "time/step_s": sum(timer.times.values())}


def reward_metrics(tasks: list[dict], rewards: torch.Tensor, scores: list, samples: list) -> dict:
    m = {"reward/mean": float(rewards.mean()), "reward/std": float(rewards.std(unbiased=False)),
         "pass_rate": float((rewards.max(dim=-1).values > 0.5).float().mean()),
         "response_length": sum(len(s.response_ids) for s in samples) / len(samples),
         "truncated_fraction": sum(s.truncated for s in samples) / len(samples),
         "score_errors": sum(s.reason.startswith(("error", "timeout")) for s in scores)}
    for env in sorted({t["env"] for t in tasks}):
        rows = torch.tensor([t["env"] == env for t in tasks])
        r = rewards[rows]
        m[f"reward/{env}/mean"], m[f"reward/{env}/std"] = float(r.mean()), float(r.std(unbiased=False))
    envs = [t["env"] for t in tasks for _ in range(rewards.shape[1])]  # one per sample, like `scores`
    return m | info_means([(env, s.info) for env, s in zip(envs, scores)])


def info_means(items: list[tuple[str, dict]]) -> dict:
    """Per-environment means of the numeric `Score.info` entries (e.g. math's share of boxed answers)."""
    sums: dict[str, list[float]] = {}
    for env, info in items:
        for k, v in info.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                sums.setdefault(f"{env}/{k}", []).append(float(v))
    return {k: sum(v) / len(v) for k, v in sums.items()}


def held_out_metrics(tasks: list[dict], groups: list[list], scores: list[Score]) -> dict:
    """One greedy answer per held-out task, scored: mean response length, each environment's
    diagnostics, and its accuracy (the mean reward). Shared by validation and `make eval`."""
    out = {"response_length": sum(len(g[0].response_ids) for g in groups) / max(len(groups), 1)}
    out.update(info_means([(t["env"], s.info) for t, s in zip(tasks, scores)]))
    for env in sorted({t["env"] for t in tasks}):
        mine = [s.reward for t, s in zip(tasks, scores) if t["env"] == env]
        out[f"{env}/accuracy"] = float(torch.tensor(mine, dtype=torch.float32).mean())
    return out


def validate(run: GRPORun) -> dict:
    """Greedy answers to the held-out tasks, scored by their environments: accuracy per env."""
    if not run.val_tasks:
        return {}
    greedy = SamplingConfig(max_new_tokens=run.g.val_max_new_tokens, temperature=0.0, top_p=1.0)
    groups = run.generate(run.val_tasks, 1, greedy, seed=0)
    _, scores = run.score(run.val_tasks, groups)
    metrics = held_out_metrics(run.val_tasks, groups, scores)
    if run.val_metrics:
        metrics.update(run.val_metrics(run.val_tasks, scores))
    return {f"val/{k}": v for k, v in metrics.items()}


# ---------------------------------------------------------------------------------- the stage
def check_environments(g) -> None:
    """Unknown environments, modules and options fail here, before any actor starts."""
    try:
        registered = load_modules(g.env_modules)
    except ImportError as e:
        raise UserError(f"grpo.env_modules: {e}") from None
    unknown = sorted(set(g.env_ratios) - set(registered))
    if unknown:
        raise UserError(f"grpo.env_ratios: no environment named {unknown}; registered: {registered} "
                        "(list the module that registers it in grpo.env_modules)")
    extra = sorted(set(g.env_options) - set(g.env_ratios))
    if extra:
        raise UserError(f"grpo.env_options: {extra} are not environments of this run ({sorted(g.env_ratios)})")
    for name in g.env_ratios:
        try:
            make(name, **dict(g.env_options.get(name, {})))
        except Exception as e:  # a bad option (TypeError) or an environment that cannot run here
            raise UserError(f"grpo.env_options.{name}: {e}") from None


def setup(cfg, model_dir: str, resume_from: str | None, env_extras=None) -> GRPORun:
    """Data, actors and weight sync of an RL run. `env_extras()` (called once Ray is up) gives
    environment options that are live objects, e.g. the RLHF judge's actor handles."""
    g = cfg.grpo
    if g.rollout.refit not in ("object_store", "broadcast"):
        raise UserError(f"grpo.rollout.refit: {g.rollout.refit!r} (object_store or broadcast)")
    check_environments(g)
    tok = load_tokenizer(type(cfg.model)(name_or_path=model_dir))
    data_dir = Path(cfg.runs_dir) / cfg.exp / "data"
    try:
        train = [t for f in g.train_tasks for t in load_tasks(builtin_data(f, data_dir, cfg.seed))]
        val = [t for f in g.val_tasks for t in load_tasks(builtin_data(f, data_dir, cfg.seed))]
        val = [t for env_tasks in group_by_env(val).values() for t in env_tasks[: g.val_size]]
        sampler = TaskSampler(group_by_env(train), dict(g.env_ratios), seed=cfg.seed)
    except TaskError as e:
        raise UserError(str(e)) from None
    files = [builtin_data(f, data_dir, cfg.seed) for f in g.train_tasks + g.val_tasks]
    ray_utils.init_ray(g.ray_address)
    start_from = resume_from or model_dir
    backend = backend_class(g.rollout.backend)
    gpu, n = g.rollout.gpus_per_worker, g.trainer.workers
    # One placement group sized from the config: rollout engines, trainer ranks, reference ranks.
    placement = ray_utils.Placement([gpu] * g.rollout.workers + [g.trainer.gpus_per_worker] * n *
                                    (2 if g.loss.kl_coef > 0 else 1))
    workers = [ray_utils.actor(backend, start_from, seed=cfg.seed + i, max_model_len=g.rollout.max_model_len,
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, num_gpus=gpu,
                               placement=placement) for i in range(g.rollout.workers)]
    ranks = dict(num_gpus=g.trainer.gpus_per_worker, device=cfg.model.device, dtype=cfg.model.dtype,
                 placement=placement)
    trainer = ray_utils.ActorGroup(PolicyTrainer, n, start_from, g.optim, g.loss, seed=cfg.seed, **ranks)
    reference = (ray_utils.ActorGroup(PolicyTrainer, n, model_dir, g.optim, g.loss, trainable=False, **ranks)
                 if g.loss.kl_coef > 0 else None)
    options = {k: dict(v) for k, v in g.env_options.items()}
    for name, extra in (env_extras() if env_extras else {}).items():
        options[name] = {**options.get(name, {}), **extra}
    envs = ray_utils.actor(EnvPool, sorted(g.env_ratios), g.score_timeout_s, options=options,
                           modules=list(g.env_modules), workers=g.score_workers)
    run = GRPORun(cfg, g, tok, trainer, reference, workers, envs, sampler, val, files,
                  multi_turn={n: REGISTRY[n].max_turns for n in g.env_ratios if REGISTRY[n].multi_turn})
    if g.rollout.refit == "broadcast":
        addr, port = trainer.rank0_address()
        world = 1 + len(workers)
        specs = ray_utils.get(trainer.call("open_weight_sync", addr, port, world) +
                              [w.open_weight_sync.remote(addr, port, i + 1, world) for i, w in enumerate(workers)])
        run.weight_specs = specs[0]
    return run


def curriculum_sampler(run_: StageRun, run: GRPORun) -> CurriculumSampler:
    """Profile the train tasks with the starting checkpoint (their pass rates over
    `profile_samples` responses; kept in the stage dir, so a resumed run reuses them), then sample
    easy to hard among the tasks not always solved."""
    c, path = run.g.curriculum, run_.dir / "curriculum_profile.json"
    if run_.resume_from and path.is_file():
        rates = json.loads(path.read_text())["pass_rates"]
    else:
        by_env = run.sampler.by_env
        tasks = [t for env in sorted(run.g.env_ratios) for t in by_env[env][: c.profile_tasks or None]]
        rewards, _ = run.score(tasks, run.generate(tasks, c.profile_samples, run.g.sampling, seed=7))
        rates = {t["id"]: float(r.mean()) for t, r in zip(tasks, rewards)}
        ckpt.write_text_atomic(path, json.dumps({"profile_samples": c.profile_samples, "pass_rates": rates}))
    kept = {k: v for k, v in rates.items() if v < c.drop_above}
    log.info("curriculum: %d tasks profiled, %d always solved dropped, mean pass rate %.3f", len(rates),
             len(rates) - len(kept), sum(rates.values()) / max(len(rates), 1))
    return CurriculumSampler(run.sampler.by_env, dict(run.g.env_ratios), kept, c, run.g.max_steps, run.cfg.seed)


def host_policy(run: GRPORun, model_dir: str):
    """The trainer's current weights in a host-side HF model, to write HF-format files from."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.load_state_dict(ray_utils.get(run.trainer.call("state_dict"))[0])
    return model


def save_checkpoint(run_: StageRun, run: GRPORun, step: int, model_dir: str) -> None:
    opt_state, sched_state = ray_utils.get(run.trainer.call("training_state"))[0]
    run_.save_checkpoint(step, host_policy(run, model_dir), run.tok, optimizer_state=opt_state,
                         scheduler_state=sched_state, trainer_state={"data": run.sampler.state()})


def run_grpo_stage(cfg, stage: str, parent_stage: str, *, start_model: str | None = None, env_extras=None,
                   lineage_extra: dict | None = None, val_metrics=None) -> dict:
    """Recipe of an RL stage: parent -> setup actors -> loop -> export + lineage -> shut Ray down.

    `start_model`: where the policy starts when it is not the parent's model (GenRM's warm start);
    `lineage_extra`: more provenance for the lineage record (e.g. the RLHF judge);
    `val_metrics(tasks, scores)`: metrics of the stage's own over each validation (the judge's
    position consistency).
    """
    g = cfg.grpo
    parent_dir = Path(cfg.parent) if cfg.parent else Path(cfg.runs_dir) / cfg.exp / parent_stage
    parent = resolve_parent(parent_dir, expect_stage=parent_stage)
    check_experiment_tokenizer(parent, Path(cfg.runs_dir) / cfg.exp)  # a parent from another experiment
    model_dir = start_model or str(parent_dir / "model")
    run_ = StageRun(stage, cfg).start(parent=parent, total_steps=g.max_steps)
    run_.record.update(lineage_extra or {})
    try:
        run = setup(cfg, model_dir, str(run_.resume_from) if run_.resume_from else None, env_extras)
        run.val_metrics = val_metrics
        if g.curriculum.enabled:
            run.sampler = curriculum_sampler(run_, run)
        step = 0
        if run_.resume_from:
            state, opt_state, sched_state = ckpt.load_training_state(run_.resume_from)
            ray_utils.get(run.trainer.call("load_training_state", opt_state, sched_state))
            run.sampler.restore(state["data"])
            step = state["step"]
        first_val = validate(run) if step == 0 else {}
        if first_val:
            run_.log(0, first_val)
        val: dict = {}
        while step < g.max_steps:
            step += 1
            metrics = grpo_step(run, step)
            if step % g.val_every == 0 or step == g.max_steps:
                val = validate(run)
                metrics.update(val)
            run_.log(step, metrics)
            if run_.should_checkpoint(step) and step < g.max_steps:
                save_checkpoint(run_, run, step, model_dir)
        summary = summarize(run_.metrics_path, val)
        data = [data_record(f, sum(1 for _ in open(f)), Path(f)) for f in run.files]
        record = run_.finish(host_policy(run, model_dir), run.tok, summary, data)
        log.info("%s finished: %s", stage, json.dumps(summary))
        return record
    except BaseException as e:
        run_.fail(e)
        raise
    finally:
        ray_utils.shutdown()


def summarize(metrics_path: Path, last_val: dict, k: int = 5) -> dict:
    rows = [r for r in read_metrics(metrics_path) if r["step"] > 0]
    first_val = next((r for r in read_metrics(metrics_path) if r["step"] == 0), {})
    rewards = [r["reward/mean"] for r in rows]
    out = {"steps": len(rows), f"reward_first{k}": sum(rewards[:k]) / max(len(rewards[:k]), 1),
           f"reward_last{k}": sum(rewards[-k:]) / max(len(rewards[-k:]), 1),
           "gen_kl_error_mean": sum(r["gen_kl_error"] for r in rows) / max(len(rows), 1),
           "token_mult_prob_error_mean": sum(r["token_mult_prob_error"] for r in rows) / max(len(rows), 1)}
    for key, v in last_val.items():
        out[f"{key}"] = v
        if key in first_val:
            out[f"{key}@start"] = first_val[key]
    return out
