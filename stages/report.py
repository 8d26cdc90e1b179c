"""`make report EXP=<exp>`: PNG plots and one HTML page from every stage's metrics.jsonl.

    python -m stages.report runs/<exp>     -> runs/<exp>/report/index.html and *.png

All stages share one time axis (hours since the first stage started, from each row's `time_s`
and the stage's start time), so the plots read as one run: loss, reward per environment,
response length, judge score, and time per phase.
"""
from __future__ import annotations

import html
import json
import sys
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from stages import lineage  # noqa: E402
from stages.metrics import read_metrics  # noqa: E402
from stages.pipeline import STAGES, summary, table  # noqa: E402

PLOTS = {  # file -> (title, which metric keys)
    "loss": ("Training loss", lambda k: k in ("loss", "val_loss")),
    "reward": ("Reward per environment",
               lambda k: k.startswith("reward/") and k.endswith("/mean") and k != "reward/mean"),
    "response_length": ("Response length (tokens)", lambda k: k in ("response_length", "val/response_length")),
    "judge_score": ("Judge score (RLHF)", lambda k: k in ("genrm/score", "val/genrm/score")),
    "phase_times": ("Seconds per phase", lambda k: k.startswith("time/") and k.endswith("_s") and k != "time/step_s"),
}


def stage_series(exp_dir: Path) -> list[tuple[str, list[dict], float]]:
    """(stage, rows, start time in seconds) for every stage with metrics, in recipe order."""
    out = []
    for stage in STAGES:
        d, rec = exp_dir / stage, lineage.read(exp_dir / stage)
        if rec and (d / "metrics.jsonl").is_file():
            start = datetime.fromisoformat(rec["started_at"]).timestamp()
            out.append((stage, read_metrics(d / "metrics.jsonl"), start))
    return out


def plot(name: str, title: str, wanted, series, t0: float, out_dir: Path) -> tuple[Path, int]:
    fig, ax = plt.subplots(figsize=(11, 4))
    lines = 0
    for stage, rows, start in series:
        keys = sorted({k for r in rows for k, v in r.items() if wanted(k) and isinstance(v, (int, float))})
        for k in keys:
            pts = [((start + r.get("time_s", 0.0) - t0) / 3600, r[k]) for r in rows if k in r]
            if pts:
                ax.plot(*zip(*pts), marker="." if len(pts) < 50 else None, label=f"{stage}: {k}")
                lines += 1
    ax.set_title(title)
    ax.set_xlabel("hours since the first stage started")
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    path = out_dir / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path, lines


def report(exp_dir: Path) -> Path:
    series = stage_series(exp_dir)
    if not series:
        raise SystemExit(f"error: {exp_dir}: no stage with metrics.jsonl; run a stage first")
    out_dir = exp_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = min(start for _, _, start in series)
    parts = [f"<h1>{html.escape(exp_dir.name)}</h1>", "<h2>Summary</h2>",
             f"<pre>{html.escape(table(summary(exp_dir)))}</pre>"]
    for name, (title, wanted) in PLOTS.items():
        path, lines = plot(name, title, wanted, series, t0, out_dir)
        parts.append(f"<h2>{html.escape(title)}</h2>" + (f'<img src="{path.name}">' if lines else "<p>no data</p>"))
    index = out_dir / "index.html"
    index.write_text("<!doctype html><meta charset=utf-8><title>report</title>\n" + "\n".join(parts) + "\n")
    (out_dir / "stages.json").write_text(json.dumps([s for s, _, _ in series]))
    return index


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m stages.report runs/<exp>", file=sys.stderr)
        return 2
    print(report(Path(argv[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
