"""The main job as users run it (`make pipeline`): SFT and RLVR at their defaults, GenRM and RLHF
shortened, then held-out eval and the summary, within the 15-minute goal on this 2-core CPU; the
SFT loss falls, GRPO raises the math reward, and the summary shows RLVR above SFT on held-out math."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stages import lineage, report
from stages.metrics import read_metrics

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}
pytestmark = pytest.mark.slow
SHORT = ["genrm/genrm.warm_start.sft.max_steps=60", "genrm/grpo.max_steps=3", "rlhf/grpo.max_steps=3",
         "rlhf/grpo.val_every=3", "eval/eval.size=32"]


def test_pipeline_on_the_embedded_default(tmp_path):
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "stages.pipeline", f"runs_dir={tmp_path}", "exp=demo",
                          "logging.progress_bar=false", *SHORT], cwd=REPO, env=ENV, capture_output=True, text=True)
    wall = time.time() - t0
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    exp = tmp_path / "demo"
    print(res.stdout[-2500:])
    print(f"pipeline: {wall:.0f}s wall")
    assert wall < 900

    rows = read_metrics(exp / "sft" / "metrics.jsonl")
    first, last = sum(r["loss"] for r in rows[:5]) / 5, sum(r["loss"] for r in rows[-10:]) / 10
    assert last < 0.05 * first  # measured: 7.6 -> 0.07

    m = lineage.read(exp / "rlvr")["metrics"]
    assert m["reward_last5"] > m["reward_first5"] + 0.05  # measured: 0.32 -> 0.47 (20 steps; 55% boxed at start)
    assert m["val/math/accuracy"] > m["val/math/accuracy@start"] + 0.3  # measured: 0.00 -> 0.94

    summary = json.loads((exp / "summary.json").read_text())
    by_stage = {r["stage"]: r for r in summary["stages"]}
    assert list(by_stage) == ["sft", "rlvr", "genrm", "rlhf"]
    assert by_stage["rlvr"]["math/accuracy"] > by_stage["sft"]["math/accuracy"] + 0.3  # measured by make eval
    assert 1.0 <= by_stage["rlhf"]["genrm/accuracy"] <= 7.5 and by_stage["rlhf"]["judge"].startswith("genrm:")
    assert all(r["wall_s"] > 0 and r["response_length"] > 0 for s, r in by_stage.items() if s != "genrm")
    assert 0.0 <= by_stage["genrm"]["val/pairwise_judge/position_consistent"] <= 1.0  # the judge's own numbers
    assert 0.0 <= by_stage["genrm"]["val/pairwise_judge/preferred_right"] <= 1.0
    table = (exp / "summary.md").read_text()
    assert "held-out math acc" in table and "judge position consistency" in table and "Lineage: sft(" in res.stdout

    index = report.report(exp)  # make report: every plot has data
    assert index.is_file()
    for png in ("loss", "reward", "response_length", "judge_score", "phase_times"):
        assert (exp / "report" / f"{png}.png").stat().st_size > 10_000, png
    assert "no data" not in index.read_text()
