"""The life of one stage run, shared by every stage: run dir, config, parent, metrics, checkpoints, lineage.

    run = StageRun("sft", cfg).start(parent=...)   # fresh, or resuming from the newest checkpoint
    ... training loop: run.log(step, metrics); run.save_checkpoint(step, ...) ...
    run.finish(model, tokenizer, summary, data)    # export model/ + lineage (status finished)

Rerunning a killed command resumes (same run_id, same config required); rerunning a finished one
is a no-op unless `overwrite=true`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from common.models import merged_for_export
from stages import checkpoint as ckpt
from stages import lineage
from stages.config import ConfigError, to_dict, to_yaml
from stages.metrics import MetricsLogger, truncate_after

log = logging.getLogger(__name__)


def builtin_data(path: str, data_dir: Path, seed: int) -> str:
    """`builtin:<name>` -> a JSONL file generated once under runs/<exp>/data/ (hashable, inspectable);
    any other path is returned unchanged."""
    if not path.startswith("builtin:"):
        return path
    from common.synthetic import BUILTIN
    from genrm.data import BUILTIN as GENRM_BUILTIN
    from grpo.tasks import builtin_env_tasks
    from stages.cli import UserError

    name, known = path.split(":", 1)[1], {**BUILTIN, **GENRM_BUILTIN}
    out = data_dir / f"{name}.jsonl"
    if not out.is_file():
        rows = known[name](seed) if name in known else builtin_env_tasks(name, seed)
        if rows is None:
            raise UserError(f"{path}: unknown built-in dataset (have {sorted(known)}, and <env>_train / "
                            "<env>_heldout for every environment with generated tasks)")
        data_dir.mkdir(parents=True, exist_ok=True)
        ckpt.write_text_atomic(out, "".join(json.dumps(r) + "\n" for r in rows))
    return str(out)


class AlreadyFinished(Exception):
    """The stage already finished with this config; nothing to do."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def state_dict_sha256(model) -> str:
    """Hash of a model's weights in memory (names, dtypes, shapes, bytes): identifies a built base model."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def base_model_ref(model_cfg, model) -> dict:
    """Lineage parent of a first stage: the base checkpoint, or the embedded model built from config."""
    if model_cfg.name_or_path:
        source = str(model_cfg.name_or_path) + (f"#{model_cfg.gguf_file}" if model_cfg.gguf_file else "")
    else:
        source = f"embedded:{(model_cfg.arch or {}).get('model_type')}(init_seed={model_cfg.init_seed})"
    return {"stage": "base", "run_id": None, "source": source, "path": model_cfg.name_or_path,
            "model_sha256": state_dict_sha256(model)}


class StageRun:
    def __init__(self, stage: str, cfg):
        self.stage = stage
        self.cfg = cfg
        self.dir = Path(cfg.runs_dir) / cfg.exp / stage
        self.ckpt_dir = self.dir / "checkpoints"
        self.model_dir = self.dir / "model"
        self.metrics_path = self.dir / "metrics.jsonl"
        self.config_text = to_yaml(cfg)
        self.config_sha256 = hashlib.sha256(self.config_text.encode()).hexdigest()
        self.resume_from: Path | None = None
        self.record: dict = {}
        self.logger: MetricsLogger | None = None

    # ------------------------------------------------------------------------------- start
    def _clear_outputs(self) -> None:
        for name in ("checkpoints", "model", "tensorboard"):
            shutil.rmtree(self.dir / name, ignore_errors=True)
        for name in ("metrics.jsonl", "lineage.json", "config.yaml"):
            (self.dir / name).unlink(missing_ok=True)

    def _previous(self) -> dict | None:
        prev = lineage.read(self.dir)
        if prev is None or self.cfg.overwrite:
            return None
        if prev.get("status") == "finished":
            if prev.get("config_sha256") == self.config_sha256:
                raise AlreadyFinished(f"{self.dir}: stage '{self.stage}' already finished "
                                      f"(run {prev.get('run_id')}); pass overwrite=true to run it again")
            raise ConfigError(f"{self.dir}: a finished '{self.stage}' run with a different config is "
                              f"here; pass overwrite=true to replace it, or use another EXP")
        return prev

    def start(self, parent: dict | None, total_steps: int | None = None) -> "StageRun":
        """Prepare the run dir; decide fresh start vs resume; write config.yaml and lineage (running)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        prev = self._previous()
        ckpt.sweep_incomplete(self.ckpt_dir)
        latest = ckpt.latest_checkpoint(self.ckpt_dir)
        if prev is not None and latest is not None and self.cfg.checkpoint.resume:
            if prev.get("config_sha256") != self.config_sha256:
                raise ConfigError(
                    f"{self.dir}/config.yaml: the config differs from the one this unfinished run "
                    f"started with; rerun with the same settings to resume, or pass overwrite=true")
            self.resume_from = latest
            run_id, started = prev["run_id"], prev["started_at"]
            resumes = prev.get("resumed_from_steps", []) + [int(latest.name.split("_")[1])]
        else:
            self._clear_outputs()
            seed_everything(self.cfg.seed)
            run_id = f"{self.stage}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
            started, resumes = lineage.now(), []
        ckpt.write_text_atomic(self.dir / "config.yaml", self.config_text)
        self.record = {
            "stage": self.stage, "run_id": run_id, "status": "running", "parent": parent,
            "model_sha256": None, "tokenizer_sha256": None, "config_sha256": self.config_sha256,
            "data": [], "git_commit": lineage.git_commit(), "started_at": started, "finished_at": None,
            "metrics": {}, "versions": lineage.versions(), "resumed_from_steps": resumes,
        }
        lineage.write(self.dir, self.record)
        start_step = self.resume_step
        truncate_after(self.metrics_path, start_step)
        lg = self.cfg.logging
        self.logger = MetricsLogger(
            self.metrics_path, total_steps=total_steps, start_step=start_step,
            progress_bar=lg.progress_bar,
            tensorboard_dir=(self.dir / "tensorboard") if lg.tensorboard else None,
            wandb_project=lg.wandb_project, mlflow_experiment=lg.mlflow_experiment,
            run_name=f"{self.cfg.exp}/{self.stage}", config=to_dict(self.cfg))
        where = f"resuming from {self.resume_from}" if self.resume_from else "fresh start"
        log.info("%s: %s (%s)", self.stage, self.dir, where)
        return self

    @property
    def resume_step(self) -> int:
        return int(self.resume_from.name.split("_")[1]) if self.resume_from else 0

    # ------------------------------------------------------------------------------- loop
    def log(self, step: int, metrics: dict) -> None:
        self.logger.log(step, metrics)

    def should_checkpoint(self, step: int) -> bool:
        every = self.cfg.checkpoint.every_steps
        return every > 0 and step % every == 0

    def save_checkpoint(self, step: int, model, tokenizer, **state) -> Path:
        return ckpt.save_checkpoint(self.ckpt_dir, step, model, tokenizer,
                                    keep_last=self.cfg.checkpoint.keep_last, **state)

    # ------------------------------------------------------------------------------- end
    def finish(self, model, tokenizer, summary: dict, data: list[dict] | None = None,
               model_state: dict | None = None) -> dict:
        """Export model/ (LoRA merged) atomically, hash it, and mark the lineage finished.

        `model_state`: full weights gathered by the caller when the model is sharded.
        """
        with ckpt.atomic_dir(self.model_dir) as tmp:
            ckpt.save_pretrained(merged_for_export(model), tokenizer, tmp, state_dict=model_state)
        self.record.update(
            status="finished", finished_at=lineage.now(), metrics=summary, data=data or [],
            model_sha256=lineage.weights_sha256(self.model_dir),
            tokenizer_sha256=lineage.tokenizer_sha256(self.model_dir))
        lineage.write(self.dir, self.record)
        self.close()
        return self.record

    def fail(self, error: BaseException) -> None:
        """Record why the run stopped; its checkpoints stay, so rerunning resumes."""
        if self.record:
            self.record.update(status="failed", error=f"{type(error).__name__}: {error}")
            lineage.write(self.dir, self.record)
        self.close()

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()
            self.logger = None
