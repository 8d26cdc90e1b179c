"""Evaluate checkpoints on the held-out sets: greedy generation (vLLM on a Ray actor) scored by the
environments' verifiers, so progress from stage to stage is measured, not asserted.

    python -m stages.eval exp=demo                          # every finished stage of runs/demo
    python -m stages.eval exp=demo eval.model=/ckpt/other   # any checkpoint (dir or hub name)
    (or: make eval EXP=demo ARGS="...")

Per model: `<env>/accuracy` (the mean reward: 0/1 for verifiers; for `genrm` the judge's score of the
answer against the task's reference, 1-5), each environment's diagnostics, and the mean response
length. Tasks of `genrm` need a judge (default: this experiment's GenRM stage; skipped when there
is none). Multi-turn environments are not evaluated here (their held-out score is the RL stages'
validation). Results: runs/<exp>/eval.json (merged with earlier results of other models).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from chat_template.render import prompt_ids
from common import ray_utils
from common.models import ModelConfig, load_tokenizer
from genrm.serving import EndpointJudge, JudgeConfig, RayJudge, VLLMJudgeWorker
from grpo.envs import REGISTRY, EnvPool, load_modules
from grpo.rollout import SamplingConfig, backend_class
from grpo.tasks import TaskError, group_by_env, load_tasks
from stages import checkpoint as ckpt
from stages import lineage
from stages.cli import UserError, main_for
from stages.grpo_loop import held_out_metrics
from stages.run import builtin_data
from stages.schema import RunConfig

log = logging.getLogger("stages.eval")


@dataclass
class EvalSettings:
    stages: list[str] = field(default_factory=lambda: ["sft", "rlvr", "rlhf"])  # finished ones are evaluated
    model: Optional[str] = None  # evaluate this checkpoint instead of the experiment's stages
    tasks: list[str] = field(default_factory=lambda: ["builtin:math_heldout", "builtin:rlhf_heldout"])
    size: int = 64  # held-out tasks per environment
    max_new_tokens: int = 64
    backend: str = "vllm"  # vllm | hf
    max_model_len: int = 2048
    env_modules: list[str] = field(default_factory=lambda: ["genrm.envs"])
    judge: JudgeConfig = field(default_factory=JudgeConfig)


@dataclass
class EvalConfig(RunConfig):
    eval: EvalSettings = field(default_factory=EvalSettings)


def models_to_evaluate(cfg: EvalConfig) -> dict[str, str]:
    if cfg.eval.model:
        return {cfg.eval.model: cfg.eval.model}  # results keyed by the path or hub name given
    exp = Path(cfg.runs_dir) / cfg.exp
    out = {}
    for stage in cfg.eval.stages:
        rec = lineage.read(exp / stage)
        if rec and rec.get("status") == "finished":
            out[stage] = str(exp / stage / "model")
    if not out:
        raise UserError(f"{exp}: none of the stages {cfg.eval.stages} has finished; nothing to evaluate")
    return out


def held_out_tasks(cfg: EvalConfig, judge_dir: str | None) -> list[dict]:
    e, data_dir = cfg.eval, Path(cfg.runs_dir) / cfg.exp / "data"
    try:
        tasks = [t for f in e.tasks for t in load_tasks(builtin_data(f, data_dir, cfg.seed))]
    except TaskError as err:
        raise UserError(str(err)) from None
    out = []
    for env, rows in sorted(group_by_env(tasks).items()):
        if env not in REGISTRY:
            raise UserError(f"eval.tasks: no environment named {env!r} (list its module in eval.env_modules)")
        if REGISTRY[env].multi_turn:
            log.warning("eval: %s is multi-turn; not evaluated here", env)
        elif env == "genrm" and judge_dir is None and e.judge.backend != "endpoint":
            log.warning("eval: no judge (no finished genrm stage, no eval.judge.model): genrm tasks skipped")
        else:
            out += rows[: e.size]
    return out


def judge_dir_for(cfg: EvalConfig) -> str | None:
    j = cfg.eval.judge
    if j.model:
        return j.model
    genrm = Path(cfg.runs_dir) / cfg.exp / "genrm"
    rec = lineage.read(genrm)
    return str(genrm / "model") if rec and rec.get("status") == "finished" else None


def evaluate_model(model_dir: str, tasks: list[dict], envs, cfg: EvalConfig) -> dict:
    """Greedy answers of one checkpoint, scored in the environment actor."""
    e = cfg.eval
    tok = load_tokenizer(ModelConfig(name_or_path=model_dir))
    worker = ray_utils.actor(backend_class(e.backend), model_dir, seed=cfg.seed, max_model_len=e.max_model_len,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    prompts = [prompt_ids(tok, t["messages"], t.get("tools"), enable_thinking=t.get("enable_thinking", True))
               for t in tasks]
    greedy = SamplingConfig(max_new_tokens=e.max_new_tokens, temperature=0.0, top_p=1.0)
    groups = ray_utils.get(worker.generate.remote(prompts, 1, greedy, 0))
    import ray

    ray.kill(worker)
    batch = [(t, [tok.decode(g[0].response_ids, skip_special_tokens=False)]) for t, g in zip(tasks, groups)]
    scores = [grp[0] for grp in ray_utils.get(envs.score_groups.remote(batch))]
    return {**held_out_metrics(tasks, groups, scores), "tasks": len(tasks)}


def run(cfg: EvalConfig) -> dict:
    e = cfg.eval
    try:
        load_modules(e.env_modules)
    except ImportError as err:
        raise UserError(f"eval.env_modules: {err}") from None
    models, judge_dir = models_to_evaluate(cfg), judge_dir_for(cfg)
    tasks = held_out_tasks(cfg, judge_dir)
    ray_utils.init_ray()
    try:
        options = {}
        if any(t["env"] == "genrm" for t in tasks):
            client = EndpointJudge(e.judge) if e.judge.backend == "endpoint" else RayJudge(
                [ray_utils.actor(VLLMJudgeWorker, judge_dir, seed=cfg.seed, max_model_len=e.max_model_len)], e.judge)
            options["genrm"] = {"judge": client, "max_retries": e.judge.max_retries}
        envs = ray_utils.actor(EnvPool, sorted({t["env"] for t in tasks}), options=options, modules=list(e.env_modules))
        results = {name: evaluate_model(d, tasks, envs, cfg) for name, d in models.items()}
    finally:
        ray_utils.shutdown()
    path = Path(cfg.runs_dir) / cfg.exp / "eval.json"
    merged = {**(json.loads(path.read_text()) if path.is_file() else {}), **results}
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_text_atomic(path, json.dumps(merged, indent=2))
    for name, r in results.items():
        log.info("eval %s: %s", name, json.dumps({k: round(v, 4) for k, v in r.items()}))
    return results


def main(argv: list[str] | None = None) -> int:
    return main_for(EvalConfig, "configs/eval.yaml", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
