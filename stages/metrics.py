"""Per-step metrics: always one JSON object per line in metrics.jsonl; optional TensorBoard/W&B/MLflow.

On resume the file is cut back to the resumed step, so a restarted run never logs a step twice.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from stages.checkpoint import write_text_atomic

PROGRESS_KEYS = ("loss", "reward/mean", "tokens_per_s", "lr")


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):  # tensors / numpy scalars
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep the information readable
    return v


def truncate_after(path: Path, step: int) -> None:
    """Drop logged rows with step > `step` (rows logged after the checkpoint we resume from)."""
    path = Path(path)
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    write_text_atomic(path, "".join(ln + "\n" for ln in keep))


def read_metrics(path: Path) -> list[dict]:
    path = Path(path)
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []


class MetricsLogger:
    def __init__(self, path: Path, *, total_steps: int | None = None, start_step: int = 0,
                 progress_bar: bool = True, tensorboard_dir: Path | None = None,
                 wandb_project: str | None = None, mlflow_experiment: str | None = None,
                 run_name: str = "", config: dict | None = None):
        self.path = Path(path)
        self._file = open(self.path, "a")
        self._t0 = time.time()
        self._bar = None
        if progress_bar and total_steps:
            from tqdm import tqdm
            self._bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, desc=run_name)
        self._tb = self._wandb = self._mlflow = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise RuntimeError("logging.tensorboard=true needs the tensorboard package "
                                   "(pip install tensorboard, or `pip install -e .[logging]`)") from None
            self._tb = SummaryWriter(str(tensorboard_dir))
        if wandb_project:
            try:
                import wandb
            except ImportError:
                raise RuntimeError("logging.wandb_project is set but wandb is not installed") from None
            self._wandb = wandb.init(project=wandb_project, name=run_name, config=config, resume="allow")
        if mlflow_experiment:
            try:
                import mlflow
            except ImportError:
                raise RuntimeError("logging.mlflow_experiment is set but mlflow is not installed") from None
            mlflow.set_experiment(mlflow_experiment)
            self._mlflow = mlflow
            mlflow.start_run(run_name=run_name)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, "time_s": round(time.time() - self._t0, 3)}
        row.update({k: _jsonable(v) for k, v in metrics.items()})
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        numeric = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        if self._tb is not None:
            for k, v in numeric.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)
        if self._mlflow is not None:
            self._mlflow.log_metrics({k.replace("/", "_"): v for k, v in numeric.items()}, step=step)
        if self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix({k: f"{row[k]:.4g}" for k in PROGRESS_KEYS if isinstance(row.get(k), (int, float))})

    def close(self) -> None:
        self._file.close()
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self._mlflow is not None:
            self._mlflow.end_run()
