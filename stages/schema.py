"""Typed config schema shared by every stage. Stage schemas extend `RunConfig` with their own section.

Components own the dataclass of their own settings (e.g. `common.models.ModelConfig`), so each
default is written exactly once, next to the code that uses it; this file only composes them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from common.models import ModelConfig


@dataclass
class CheckpointConfig:
    every_steps: int = 50  # 0 disables periodic checkpoints (the final export still happens)
    keep_last: int = 2
    resume: bool = True  # rerunning the same command continues from the newest checkpoint


@dataclass
class LoggingConfig:
    progress_bar: bool = True
    tensorboard: bool = False  # writes <stage dir>/tensorboard/
    wandb_project: Optional[str] = None
    mlflow_experiment: Optional[str] = None


@dataclass
class RunConfig:
    exp: str = "demo"  # runs/<exp>/<stage>/
    runs_dir: str = "runs"
    seed: int = 0
    # Parent stage directory; None: runs/<exp>/<the stage's default parent>.
    parent: Optional[str] = None
    # Start this stage over even if it finished or has checkpoints (old outputs are removed).
    overwrite: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
