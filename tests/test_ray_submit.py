"""Ray cluster job submission: a real local cluster (`ray start --head` on loopback, token auth off
for this test only), the tiny SFT and RLVR stages submitted as jobs, their lineage checked, and the
cluster stopped whatever happens."""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from stages import lineage
from stages.submit import main as submit

REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    pytest.importorskip("vllm")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    port, dash = _free_port(), _free_port()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    start = subprocess.run([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                            "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                            f"--dashboard-port={dash}", "--disable-usage-stats",
                            f"--temp-dir={temp}"], env=env, capture_output=True, text=True, timeout=180)
    try:
        assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]
        yield f"http://127.0.0.1:{dash}"
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_stages_submitted_as_ray_jobs(cluster, tmp_path, capsys):
    runs = tmp_path / "runs"
    common = ["--address", cluster, "--python", sys.executable, f"runs_dir={runs}", "exp=job",
              "logging.progress_bar=false"]
    rc = submit(["sft", *common, "sft.max_steps=3", "sft.pack_size=512",
                 "sft.data.sources=[{path: 'builtin:sft_default', max_rows: 120}]"])
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    assert "submitted sft as job " in out and "SUCCEEDED" in out
    job_id = out.split("submitted sft as job ")[1].split()[0]
    rc = submit(["rlvr", *common, "grpo.max_steps=1", "grpo.prompts_per_step=2", "grpo.group_size=2",
                 "grpo.sampling.max_new_tokens=8", "grpo.val_size=2", "grpo.val_max_new_tokens=8"])
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    sft, rlvr = lineage.read(runs / "job" / "sft"), lineage.read(runs / "job" / "rlvr")
    assert sft["status"] == "finished" and rlvr["status"] == "finished"
    assert rlvr["parent"]["run_id"] == sft["run_id"]
    assert submit(["--address", cluster, "--status", job_id]) == 0
    assert "SUCCEEDED" in capsys.readouterr().out
    assert submit(["--address", cluster, "--logs", job_id]) == 0
    assert "sft finished" in capsys.readouterr().out
