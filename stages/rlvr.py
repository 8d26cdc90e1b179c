"""Stage 2: RLVR, synchronous multi-environment GRPO with vLLM rollout workers on Ray.

    python -m stages.rlvr [--config configs/rlvr.yaml] key=value ...     (or: make rlvr ARGS="...")

Parent: the SFT stage of the same experiment (or `parent=<stage dir>`). The loop itself is
stages/grpo_loop.py, shared with the GenRM and RLHF stages.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from stages.cli import main_for
from stages.grpo_loop import GRPOConfig, run_grpo_stage
from stages.schema import RunConfig


@dataclass
class RLVRStageConfig(RunConfig):
    grpo: GRPOConfig = field(default_factory=GRPOConfig)


def run(cfg: RLVRStageConfig) -> dict:
    return run_grpo_stage(cfg, stage="rlvr", parent_stage="sft")


def main(argv: list[str] | None = None) -> int:
    return main_for(RLVRStageConfig, "configs/rlvr.yaml", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
