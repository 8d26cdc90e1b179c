"""Stage 3a: train the pairwise judge (GenRM) with GRPO, reusing the RLVR loop.

    python -m stages.genrm [--config configs/genrm.yaml] key=value ...     (or: make genrm ARGS="...")

Recipe: preference pairs (genrm.data schema) -> two judge tasks each (as given and swapped) ->
optional warm start (SFT on judge-format examples, so a small model emits parseable verdicts at
all; kept in runs/<exp>/genrm/warm_start) -> GRPO with the `pairwise_judge` environment, rewarded
by closeness to the gold scores and ranking. Lineage parent: the SFT stage of the experiment.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from common.models import ModelConfig
from genrm.data import PreferenceError, judge_tasks, load_preferences
from genrm.envs import position_consistency
from sft.trainer import SFTConfig
from stages import checkpoint as ckpt
from stages import sft as sft_stage
from stages.cli import UserError, main_for
from stages.grpo_loop import GRPOConfig, run_grpo_stage
from stages import lineage
from stages.lineage import resolve_parent
from stages.run import AlreadyFinished, builtin_data
from stages.schema import CheckpointConfig, RunConfig


@dataclass
class WarmStart:
    enabled: bool = False
    sft: SFTConfig = field(default_factory=SFTConfig)  # its data: judge-format conversations
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)  # not the RL loop's (every few steps)


@dataclass
class GenRMTrainConfig:
    train_pairs: list[str] = field(default_factory=lambda: ["builtin:preferences_train"])
    val_pairs: list[str] = field(default_factory=lambda: ["builtin:preferences_heldout"])
    warm_start: WarmStart = field(default_factory=WarmStart)


@dataclass
class GenRMStageConfig(RunConfig):
    genrm: GenRMTrainConfig = field(default_factory=GenRMTrainConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)


def task_files(paths: list[str], data_dir: Path, seed: int) -> list[str]:
    """Preference files -> judge task files (both orders) in runs/<exp>/data/, written once."""
    out = []
    for path in paths:
        src = Path(builtin_data(path, data_dir, seed))
        dst = data_dir / f"{src.stem}.judge_tasks.jsonl"
        if not dst.is_file():
            try:
                tasks = judge_tasks(load_preferences(src))
            except (PreferenceError, OSError) as e:
                raise UserError(str(e)) from None
            data_dir.mkdir(parents=True, exist_ok=True)
            ckpt.write_text_atomic(dst, "".join(json.dumps(t) + "\n" for t in tasks))
        out.append(str(dst))
    return out


def warm_start(cfg: GenRMStageConfig, sft_model: str) -> tuple[str, dict]:
    """SFT of the parent on judge-format data, as a nested stage run in runs/<exp>/genrm/warm_start."""
    ws = sft_stage.SFTStageConfig(
        exp=f"{cfg.exp}/genrm", runs_dir=cfg.runs_dir, seed=cfg.seed, overwrite=cfg.overwrite,
        model=ModelConfig(name_or_path=sft_model, device=cfg.model.device, dtype=cfg.model.dtype),
        checkpoint=cfg.genrm.warm_start.checkpoint, logging=cfg.logging, sft=cfg.genrm.warm_start.sft)
    dest = Path(cfg.runs_dir) / cfg.exp / "genrm" / "warm_start"
    try:
        record = sft_stage.run(ws, stage="warm_start")
    except AlreadyFinished:  # the GRPO part is being resumed or rerun: reuse the finished warm start
        record = lineage.read(dest)
    return str(dest / "model"), {"run_id": record["run_id"], "model_sha256": record["model_sha256"],
                                 "steps": record["metrics"].get("steps"), "path": str(dest)}


def run(cfg: GenRMStageConfig) -> dict:
    data_dir = Path(cfg.runs_dir) / cfg.exp / "data"
    cfg.grpo.train_tasks = task_files(list(cfg.genrm.train_pairs), data_dir, cfg.seed) + list(cfg.grpo.train_tasks)
    cfg.grpo.val_tasks = task_files(list(cfg.genrm.val_pairs), data_dir, cfg.seed) + list(cfg.grpo.val_tasks)
    parent_dir = Path(cfg.parent) if cfg.parent else Path(cfg.runs_dir) / cfg.exp / "sft"
    resolve_parent(parent_dir, expect_stage="sft")  # before any work
    start, extra = None, {}
    if cfg.genrm.warm_start.enabled:
        start, record = warm_start(cfg, str(parent_dir / "model"))
        extra = {"warm_start": record}
    return run_grpo_stage(cfg, stage="genrm", parent_stage="sft", start_model=start, lineage_extra=extra,
                          val_metrics=position_consistency)


def main(argv: list[str] | None = None) -> int:
    return main_for(GenRMStageConfig, "configs/genrm.yaml", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
