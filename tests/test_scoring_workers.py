"""Scoring under hard deadlines: every per-sample verifier call runs in a worker process that is
killed and replaced when it runs past its deadline, so a hostile answer can neither hang the run
nor leave a core burning, and the scoring CLI shows each row as it is scored."""
import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from grpo.envs import Environment, EnvPool, register

REPO = Path(__file__).resolve().parent.parent
MODULES = ["tests.hostile_envs"]


def cpu_seconds(procs: list) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def processes_with(marker: str) -> list:
    return [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]


def test_hanging_and_crashing_verifiers_give_zero_and_leave_nothing_running():
    marker = f"hostile-{uuid.uuid4().hex}"
    envs = ["test_spins", "test_spins_in_c", "test_spawns", "test_raises", "test_dies", "test_not_a_score",
            "test_echo", "math"]
    threads = threading.active_count()
    with EnvPool(envs, timeout_s=2.0, modules=MODULES, workers=2) as pool:
        items = [({"env": e, "marker": marker}, "x") for e in envs[:6]]
        items += [({"env": "test_echo"}, "yes"), ({"env": "math", "answer": "2"}, "r</think>\\boxed{2}"),
                  ({"env": "nope"}, "x")]
        out = pool.score(items)
        assert [s.reward for s in out] == [0.0] * 6 + [1.0, 1.0, 0.0]
        assert [s.reason for s in out[:3]] == ["timeout after 2s"] * 3
        assert out[3].reason == "error: RuntimeError: verifier blew up"
        assert out[4].reason.startswith("error: scoring worker died")
        assert out[5].reason == "error: TypeError: test_not_a_score.score returned float, not a Score"
        assert "no environment 'nope'" in out[8].reason
        # Nothing of the hung calls survives: no thread here beyond the pool's spawner, no process
        # but the pool's idle workers (the spawned busy child is gone too), and no CPU burning.
        assert threading.active_count() == threads + 1
        pool.pool.wait_ready()  # the replacements have started (their imports are no leftover work)
        children = psutil.Process().children(recursive=True)
        assert sorted(p.pid for p in children) == sorted(pool.worker_pids()) and len(children) == 2
        assert processes_with(marker) == []
        before = cpu_seconds(children)
        time.sleep(1.0)
        assert cpu_seconds(children) - before < 0.3
        # the replacements score, and calls are spread over both workers
        again = pool.score([({"env": "test_echo"}, "yes")] * 8)
        assert all(s.reward == 1.0 for s in again) and {s.info["pid"] for s in again} <= set(pool.worker_pids())
    assert psutil.Process().children(recursive=True) == [] and threading.active_count() == threads


def test_multi_turn_steps_run_under_the_deadline_too():
    with EnvPool(["test_spins", "tool_use"], timeout_s=1.0, modules=MODULES, workers=1) as pool:
        out = pool.step([({"env": "test_spins"}, None, "turn")])
        assert out == [(None, None, "timeout after 1s")]


def test_environment_that_cannot_start_in_a_worker_is_a_clear_error():
    class Local(Environment):
        name = "test_local"

    register(Local)
    with pytest.raises(ValueError, match="define it at the top level of an importable module"):
        EnvPool(["test_local"])
    with pytest.raises(RuntimeError, match="scoring worker: OSError: no verifier here"):
        EnvPool(["test_fails_in_worker"], modules=MODULES)


def test_scoring_cli_refuses_an_exponent_tower_and_prints_rows_as_they_are_scored(tmp_path):
    rows = [{"id": "tower", "env": "math", "prompt": "q", "answer": "2", "response": "r</think>\\boxed{9^{9^{9^{9}}}}"},
            {"id": "spin", "env": "test_spins", "prompt": "q", "response": "x"},
            {"id": "right", "env": "math", "prompt": "q", "answer": "2", "response": "r</think>\\boxed{2}"}]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = subprocess.Popen([sys.executable, "-m", "grpo.envs", "score", "--input", str(path), "--modules",
                             "tests.hostile_envs", "--workers", "2", "--timeout-s", "15"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = [proc.stdout.readline(), proc.stdout.readline()]
    still_running = proc.poll() is None  # the spinning row holds its worker for 15 s
    rest, err = proc.communicate(timeout=120)
    assert still_running and proc.returncode == 0, err
    lines = dict(line.split("\t", 1) for line in first + rest.splitlines(keepends=True))
    assert sorted(lines) == ["right", "spin", "tower"]
    assert lines["tower"] == "0\trefused: exponent tower\n" and lines["right"] == "1\tcorrect\n"
    assert lines["spin"] == "0\ttimeout after 15s\n"
    assert "3 rows, mean reward 0.333" in err
