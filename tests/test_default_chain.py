"""The embedded default as users run it (`make sft`, then `make rlvr`): each within its time goal
on this 2-core CPU, the SFT loss falls, and GRPO raises the math reward and held-out accuracy."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stages import lineage
from stages.metrics import read_metrics

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}
pytestmark = pytest.mark.slow


def _stage(stage: str, runs: Path) -> float:
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", f"stages.{stage}", f"runs_dir={runs}", "exp=demo",
                          "logging.progress_bar=false"], cwd=REPO, env=ENV, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return time.time() - t0


def test_default_sft_then_rlvr(tmp_path):
    wall = _stage("sft", tmp_path)
    rows = read_metrics(tmp_path / "demo" / "sft" / "metrics.jsonl")
    first = sum(r["loss"] for r in rows[:5]) / 5
    last = sum(r["loss"] for r in rows[-10:]) / 10
    print(f"default sft: {wall:.1f}s wall, loss first-5 {first:.3f} -> last-10 {last:.3f}")
    assert last < 0.05 * first
    assert wall < 180

    wall = _stage("rlvr", tmp_path)
    rec = lineage.read(tmp_path / "demo" / "rlvr")
    m = rec["metrics"]
    print(f"default rlvr: {wall:.1f}s wall, reward first-5 {m['reward_first5']:.3f} -> last-5 "
          f"{m['reward_last5']:.3f}, held-out accuracy {m['val/math/accuracy@start']:.3f} -> "
          f"{m['val/math/accuracy']:.3f}, boxed {m['val/math/boxed@start']:.2f} -> {m['val/math/boxed']:.2f}")
    assert wall < 300
    assert rec["parent"]["stage"] == "sft"
    assert m["reward_last5"] > m["reward_first5"] + 0.15  # measured: 0.19 -> 0.62
    assert m["val/math/accuracy"] > m["val/math/accuracy@start"] + 0.3  # measured: 0.00 -> 0.89
