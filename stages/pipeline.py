"""The whole recipe in one experiment: SFT -> RLVR -> GenRM -> RLHF -> held-out eval -> summary.

    python -m stages.pipeline exp=demo [key=value ...] [<stage>/key=value ...]   (or: make pipeline)

Each stage runs as its own process with its default config (`configs/<stage>.yaml`); a plain
`key=value` goes to every stage (e.g. `seed=1`, `runs_dir=/shared/runs`), `<stage>/key=value` to
one (`rlvr/grpo.max_steps=10`, `eval/eval.size=32`). A stage that already finished is skipped, so
rerunning after a failure continues where it stopped. The summary (printed, and saved as
runs/<exp>/summary.md and summary.json) holds per stage the held-out accuracy per environment,
the judge's score, the mean response length, the wall time, and the lineage chain.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from stages import checkpoint as ckpt
from stages import lineage
from stages.metrics import read_metrics

STAGES = ["sft", "rlvr", "genrm", "rlhf"]


def split_args(argv: list[str]) -> tuple[dict, list[str], dict[str, list[str]]]:
    """(exp and runs_dir, args for every stage, args per stage)."""
    common, scoped, where = [], {s: [] for s in [*STAGES, "eval"]}, {"exp": "demo", "runs_dir": "runs"}
    for item in argv:
        key = item.split("=", 1)[0]
        if "/" in key:
            stage, rest = item.split("/", 1)
            if stage not in scoped:
                raise SystemExit(f"error: {item}: no stage {stage!r} (one of {sorted(scoped)})")
            scoped[stage].append(rest)
        else:
            if key in where:
                where[key] = item.split("=", 1)[1]
            common.append(item)
    return where, common, scoped


def wall_s(rec: dict) -> float | None:
    try:
        return (datetime.fromisoformat(rec["finished_at"]) - datetime.fromisoformat(rec["started_at"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return None


def ranking_spread(metrics_path: Path) -> dict:
    """How the judge's verdicts spread over the rankings during RL (training steps, all comparisons
    weighted alike): a judge that gives one ranking to nearly everything is not telling responses
    apart. `judge_top_ranking_share`: the share of the most frequent one."""
    rows = [r for r in read_metrics(metrics_path) if r["step"] > 0 and "genrm/ranking_1" in r]
    if not rows:
        return {}
    keys = [k for k in rows[0] if k.startswith("genrm/ranking_")]
    shares = {k.removeprefix("genrm/"): sum(r.get(k, 0.0) for r in rows) / len(rows) for k in keys}
    top = max(shares, key=shares.get)
    return {"judge_rankings": shares, "judge_top_ranking": top.removeprefix("ranking_"),
            "judge_top_ranking_share": shares[top]}


def summary(exp_dir: Path) -> dict:
    """Per stage: eval numbers (held-out accuracy per env, judge score, response length), the
    judge's own held-out numbers for the GenRM stage, wall time, run id and parent."""
    evals = json.loads((exp_dir / "eval.json").read_text()) if (exp_dir / "eval.json").is_file() else {}
    rows, chain = [], []
    for stage in STAGES:
        rec = lineage.read(exp_dir / stage)
        if not rec:
            continue
        parent = rec.get("parent") or {}
        row = {"stage": stage, "run_id": rec.get("run_id"), "status": rec.get("status"),
               "parent": f"{parent.get('stage')}:{parent.get('run_id') or parent.get('source')}",
               "wall_s": wall_s(rec), **evals.get(stage, {})}
        if stage == "genrm":
            m = rec.get("metrics") or {}
            row.update({k: v for k, v in m.items() if k.startswith("val/pairwise_judge/") and "@" not in k})
            warm = wall_s(lineage.read(exp_dir / stage / "warm_start")) if rec.get("warm_start") else None
            if warm and row["wall_s"] is not None:  # the judge's warm start is part of the stage's time
                row["wall_s"] += warm
        if rec.get("judge"):
            row["judge"] = f"{rec['judge'].get('stage') or rec['judge'].get('backend')}:{rec['judge'].get('run_id')}"
            row.update(ranking_spread(exp_dir / stage / "metrics.jsonl"))
        rows.append(row)
        chain.append(f"{stage}({rec.get('run_id')}) <- {row['parent']}")
    return {"exp": str(exp_dir), "stages": rows, "lineage": chain}


def table(s: dict) -> str:
    cols = ["stage", "math/accuracy", "genrm/accuracy", "response_length", "val/pairwise_judge/preferred_right",
            "val/pairwise_judge/position_consistent", "val/pairwise_judge/format_ok", "judge_top_ranking_share",
            "wall_s", "run_id"]
    names = {"math/accuracy": "held-out math acc", "genrm/accuracy": "judge score (1-5)",
             "response_length": "mean resp. tokens", "val/pairwise_judge/preferred_right": "judge picks right side",
             "val/pairwise_judge/position_consistent": "judge position consistency",
             "val/pairwise_judge/format_ok": "judge format ok", "wall_s": "wall time (s)",
             "judge_top_ranking_share": "judge's most frequent ranking (share)",
             "val/pairwise_judge/accuracy": "judge training reward"}
    extra = sorted({k for r in s["stages"] for k in r if k.endswith("/accuracy") and k not in cols})
    cols[3:3] = extra

    def cell(v):
        return "-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(names.get(c, c) for c in cols) + " |", "|" + " --- |" * len(cols)]
    def cell_of(r, c):
        if c == "judge_top_ranking_share" and c in r:
            return f"{r['judge_top_ranking']}: {r[c]:.2f}"
        return cell(r.get(c))

    lines += ["| " + " | ".join(cell_of(r, c) for c in cols) + " |" for r in s["stages"]]
    return "\n".join(lines + ["", "Lineage: " + "; ".join(s["lineage"])])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    where, common, scoped = split_args(argv)
    exp_dir = Path(where["runs_dir"]) / where["exp"]
    t0 = time.time()
    for stage in [*STAGES, "eval"]:
        cmd = [sys.executable, "-m", f"stages.{stage}", "--config", f"configs/{stage}.yaml", f"exp={where['exp']}",
               *common, *scoped[stage]]
        print(f"[pipeline] {stage}: {' '.join(cmd[2:])}", flush=True)
        start = time.time()
        rc = subprocess.call(cmd)
        print(f"[pipeline] {stage}: exit {rc} after {time.time() - start:.0f} s", flush=True)
        if rc != 0:
            print(f"[pipeline] stopped at {stage}; rerun the same command to continue", file=sys.stderr)
            return rc
    s = summary(exp_dir)
    s["pipeline_wall_s"] = time.time() - t0
    text = table(s)
    ckpt.write_text_atomic(exp_dir / "summary.json", json.dumps(s, indent=2))
    ckpt.write_text_atomic(exp_dir / "summary.md", f"# {where['exp']}\n\n{text}\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
