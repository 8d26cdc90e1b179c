"""Stage 3b: RLHF, GRPO of the RLVR model against a generative pairwise judge (GenRM).

    python -m stages.rlhf [--config configs/rlhf.yaml] key=value ...     (or: make rlhf ARGS="...")

Recipe: the RLVR loop (stages/grpo_loop.py) with the `genrm` environment, which sends every
pairwise comparison of a step to the judge in one batch and turns the verdicts into per-response
rewards (genrm.aggregate). The judge is vLLM on Ray actors (default: this experiment's GenRM stage;
any HF checkpoint with judge.model) or an OpenAI-compatible endpoint (judge.backend=endpoint).
Other environments can be mixed into the same batch through grpo.env_ratios. Lineage parent: the
RLVR stage; the judge is recorded beside it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from common import ray_utils
from genrm.aggregate import RewardConfig, comparison_pairs
from genrm.serving import EndpointJudge, JudgeConfig, RayJudge, VLLMJudgeWorker
from stages.cli import UserError, main_for
from stages.grpo_loop import GRPOConfig, run_grpo_stage
from stages.lineage import LINEAGE_FILE, resolve_parent
from stages.schema import RunConfig


@dataclass
class RLHFStageConfig(RunConfig):
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)


def judge_source(cfg: RLHFStageConfig) -> tuple[str | None, dict]:
    """(model dir for vLLM or None, the judge's lineage entry). A GenRM stage dir is checked like a
    parent (finished, weights unmodified); any other checkpoint is recorded by its path."""
    j = cfg.judge
    if j.backend == "endpoint":
        if not j.url or not j.model:
            raise UserError("judge.backend=endpoint needs judge.url and judge.model")
        return None, {"backend": "endpoint", "url": j.url, "model": j.model}
    if j.backend != "vllm":
        raise UserError(f"judge.backend: {j.backend!r} (vllm or endpoint)")
    where = Path(j.model) if j.model else Path(cfg.runs_dir) / cfg.exp / "genrm"
    if (where / LINEAGE_FILE).is_file() or not j.model:
        ref = resolve_parent(where, expect_stage="genrm")
        return str(where / "model"), {"backend": "vllm", **ref}
    return str(j.model), {"backend": "vllm", "source": str(j.model)}


def run(cfg: RLHFStageConfig) -> dict:
    if "genrm" not in cfg.grpo.env_ratios:
        raise UserError("grpo.env_ratios: the RLHF stage needs the genrm environment")
    reward = cfg.reward
    try:
        comparison_pairs(2, reward.plan)
    except ValueError as e:
        raise UserError(f"reward.plan: {e}") from None
    judge_cfg = cfg.judge
    model_dir, record = judge_source(cfg)

    def env_extras() -> dict:  # runs once Ray is up: the judge actors, or the endpoint client
        if model_dir is None:
            client = EndpointJudge(judge_cfg)
        else:
            client = RayJudge([ray_utils.actor(VLLMJudgeWorker, model_dir, seed=cfg.seed + 7 + i,
                                               max_model_len=judge_cfg.max_model_len,
                                               num_gpus=judge_cfg.gpus_per_worker)
                               for i in range(judge_cfg.workers)], judge_cfg)
        return {"genrm": {"judge": client, "reward": reward, "max_retries": judge_cfg.max_retries}}

    return run_grpo_stage(cfg, stage="rlhf", parent_stage="rlvr", env_extras=env_extras,
                          lineage_extra={"judge": record})


def main(argv: list[str] | None = None) -> int:
    return main_for(RLHFStageConfig, "configs/rlhf.yaml", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
