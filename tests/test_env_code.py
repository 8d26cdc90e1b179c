"""The code environment and its sandbox: right programs pass, and every hostile or broken program
ends in reward 0 with its reason while the host stays untouched (no file written outside the
sandbox, nothing read, no connection made, no process left behind)."""
import os
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from grpo.envs import make, score_batch, score_safely
from grpo.envs import sandbox

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not sandbox.namespaces_available(), reason="no namespace sandbox on this machine")
SUM = {"env": "code", "prompt": "Read two integers and print their sum.",
       "tests": [{"input": "3 4\n", "output": "7\n"}, {"input": "10 -2\n", "output": "8"}]}


def answer(program: str, reasoning: str = "plan") -> str:
    return f"{reasoning}\n</think>\nHere it is:\n```python\n{program}\n```<|im_end|>"


def score(program: str, task: dict = SUM, **env_options):
    return score_safely(make("code", **env_options), {**SUM, **task}, answer(program), timeout_s=60)


def sandbox_processes() -> list[int]:
    """Live processes running as a sandbox uid (>= 200000, see sandbox._sandbox_uid)."""
    pids = []
    for p in Path("/proc").iterdir():
        try:
            uid = int((p / "status").read_text().split("\nUid:\t")[1].split()[0]) if p.name.isdigit() else -1
        except (OSError, IndexError, ValueError):
            continue
        if uid >= 200_000:
            pids.append(int(p.name))
    return pids


def test_stdin_stdout_and_assert_tasks_pass():
    s = score("a, b = map(int, input().split())\nprint(a + b)")
    assert (s.reward, s.reason) == (1.0, "passed 2/2 runs")
    task = {"tests": [], "asserts": ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]}
    assert score("def add(a, b):\n    return a + b", task).reward == 1.0


@pytest.mark.parametrize("program,reason", [
    ("a, b = map(int, input().split())\nprint(a - b)", "test 1/2: wrong output (expected '7', got '-1')"),
    ("print(7)", "test 2/2: wrong output (expected '8', got '7')"),  # right on one test only
    ("raise SystemExit(3)", "test 1/2: exit_error"),
    ("import numpy", "test 1/2: exit_error: ModuleNotFoundError: No module named 'numpy'"),  # no site-packages
])
def test_wrong_programs(program, reason):
    s = score(program)
    assert s.reward == 0.0 and s.reason.startswith(reason), s.reason


def test_answer_format_and_reasoning():
    env = make("code")
    assert score_safely(env, SUM, "x\n</think>\nprint(7)<|im_end|>").reason == "no code block in the answer"
    in_reasoning = "```python\na, b = map(int, input().split())\nprint(a + b)\n```\n</think>\nno code"
    assert score_safely(env, SUM, in_reasoning).reward == 0.0  # code in the reasoning is never run
    assert "neither" in score_safely(env, {"env": "code", "prompt": "p"}, answer("print(1)")).reason


def test_right_output_but_too_slow():
    s = score("import time\ntime.sleep(3)\na, b = map(int, input().split())\nprint(a + b)", {"time_limit_s": 1})
    assert s.reward == 0.0 and s.reason == "test 1/2: timeout"
    s = score("sum(range(10**9))\na, b = map(int, input().split())\nprint(a + b)", {"time_limit_s": 1})
    assert s.reward == 0.0 and s.reason in ("test 1/2: cpu_limit", "test 1/2: timeout")


def test_limits_end_in_reward_zero_with_reason():
    cases = {
        "while True:\n    pass": ("cpu_limit", "timeout"),
        "x = bytearray(4 << 30)": ("memory_limit",),
        "while True:\n    print('y' * 100000)": ("output_limit",),
        "open('/tmp/big', 'wb').write(b'0' * (64 << 20))": ("file_limit", "memory_limit", "exit_error"),
    }
    for program, statuses in cases.items():
        s = score(program, {"time_limit_s": 2})
        assert s.reward == 0.0 and s.reason.split(": ")[1] in statuses, (program, s.reason)


def test_fork_bomb_is_contained_and_leaves_no_process():
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    t0 = time.time()
    s = score(bomb, {"time_limit_s": 2})
    assert s.reward == 0.0 and s.reason in ("test 1/2: timeout", "test 1/2: cpu_limit"), s.reason
    assert time.time() - t0 < 15
    time.sleep(0.5)
    assert sandbox_processes() == []
    # a daemonised grandchild does not survive its sandbox either
    score("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nprint(7)")
    time.sleep(0.5)
    assert sandbox_processes() == []


def test_secrets_and_host_files_are_out_of_reach(tmp_path, monkeypatch):
    secret = uuid.uuid4().hex
    monkeypatch.setenv("SANDBOX_TEST_SECRET", secret)
    for place in (REPO / f".secret-{secret[:8]}", Path.home() / f".secret-{secret[:8]}", tmp_path / "secret"):
        place.write_text(secret)
    try:
        paths = [f"{REPO}/.secret-{secret[:8]}", f"{Path.home()}/.secret-{secret[:8]}", f"{tmp_path}/secret",
                 "/etc/shadow", "/proc/1/environ"]
        thief = ("import os, glob\nfound = [os.environ.get('SANDBOX_TEST_SECRET', '')]\n"
                 f"for p in {paths!r}:\n"
                 "    try:\n        found.append(open(p).read())\n"
                 "    except OSError as e:\n        found.append(type(e).__name__)\n"
                 "print(found, glob.glob('/work/*') + glob.glob('/home/*') + glob.glob('/root/*'))")
        task = {"tests": [{"input": "", "output": secret}]}
        s = score(thief, task)
        assert s.reward == 0.0 and s.reason.startswith("test 1/1: wrong output")
        r = sandbox.run(thief)
        assert r.ok and secret not in r.stdout and "/work/main" not in r.stdout, r.stdout
    finally:
        for place in (REPO / f".secret-{secret[:8]}", Path.home() / f".secret-{secret[:8]}"):
            place.unlink()


def test_writes_never_reach_the_host():
    marker = f"sandbox-write-{uuid.uuid4().hex[:8]}"
    targets = [f"/tmp/{marker}", f"{REPO}/{marker}", f"{Path.home()}/{marker}", f"/var/tmp/{marker}"]
    writer = "\n".join(f"try:\n    open({t!r}, 'w').write('x')\nexcept OSError:\n    pass" for t in targets)
    s = score(writer + "\nprint(7)")
    assert s.reward == 0.0  # 7 is right for the first test only
    assert not any(Path(t).exists() for t in targets)


def test_no_network_not_even_the_hosts_loopback():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(3)
    port, accepted = server.getsockname()[1], []
    t = threading.Thread(target=lambda: accepted.append(_accept(server)))
    t.start()
    prog = (f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "    print('connected')\nexcept OSError as e:\n    print(type(e).__name__)")
    r = sandbox.run(prog)
    t.join()
    server.close()
    assert r.ok and "connected" not in r.stdout and accepted == [None]


def _accept(server):
    try:
        return server.accept()
    except socket.timeout:
        return None


def test_refuses_to_run_without_isolation_unless_allowed(monkeypatch):
    monkeypatch.setattr(sandbox, "namespaces_available", lambda: False)
    with pytest.raises(sandbox.SandboxUnavailable, match="allow_unisolated"):
        make("code")
    s = score("a, b = map(int, input().split())\nprint(a + b)", allow_unisolated=True)
    assert s.reward == 1.0  # trusted code still runs, with the resource limits only


def test_scoring_uses_both_cores():
    """A batch of CPU-bound programs scored with one worker per core keeps more than one core busy."""
    busy = answer("x = 0\nfor i in range(3_000_000):\n    x += i\na, b = map(int, input().split())\nprint(a + b)")
    env = {"code": make("code")}
    items = [(SUM, busy)] * 24
    cpu0, t0 = os.times(), time.perf_counter()
    scores = score_batch(env, items, workers=os.cpu_count())
    wall, cpu1 = time.perf_counter() - t0, os.times()
    children = (cpu1.children_user + cpu1.children_system) - (cpu0.children_user + cpu0.children_system)
    print(f"{len(items)} code responses: {wall:.2f}s wall, {children / wall:.2f} cores busy")
    assert all(s.reward == 1.0 for s in scores)
    if (os.cpu_count() or 1) >= 2:
        assert children / wall > 1.2
