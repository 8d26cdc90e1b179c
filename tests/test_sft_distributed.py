"""FSDP2 data parallelism: 2 CPU processes (gloo) follow the same loss curve as 1 process."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from stages import lineage
from stages.metrics import read_metrics

REPO = Path(__file__).resolve().parent.parent
ARGS = ["sft.data.sources=[{path: 'builtin:sft_default', max_rows: 240}]", "sft.pack_size=512",
        "sft.packs_per_step=2", "sft.val_every=3", "sft.max_steps=6", "checkpoint.every_steps=3",
        "logging.progress_bar=false"]
pytestmark = pytest.mark.slow


def _run(launcher, runs, exp):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(launcher + ["-m", "stages.sft", f"runs_dir={runs}", f"exp={exp}", *ARGS], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return read_metrics(runs / exp / "sft" / "metrics.jsonl")


def test_fsdp2_two_processes_match_one(tmp_path):
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2"]
    two = _run(torchrun, tmp_path, "dp2")
    one = _run([sys.executable], tmp_path, "dp1")
    assert len(one) == len(two) == 6
    for a, b in zip(one, two):
        assert abs(a["loss"] - b["loss"]) < 1e-4 * max(1.0, a["loss"]), (a["step"], a["loss"], b["loss"])
        assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-3 * max(1.0, a["grad_norm"])
    assert one[-1]["loss"] < one[0]["loss"] - 1.0  # it did learn
    rec = lineage.read(tmp_path / "dp2" / "sft")
    assert rec["status"] == "finished" and rec["metrics"]["world_size"] == 2
    assert (tmp_path / "dp2" / "sft" / "checkpoints" / "step_3" / "optimizer.pt").is_file()
    m1 = AutoModelForCausalLM.from_pretrained(tmp_path / "dp1" / "sft" / "model").state_dict()
    m2 = AutoModelForCausalLM.from_pretrained(tmp_path / "dp2" / "sft" / "model").state_dict()
    assert all(torch.allclose(m1[k], m2[k], atol=1e-4) for k in m1)
