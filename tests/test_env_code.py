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

from grpo.envs import EnvPool, make
from grpo.envs import sandbox

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not sandbox.namespaces_available(), reason="no namespace sandbox on this machine")
SUM = {"env": "code", "prompt": "Read two integers and print their sum.",
       "tests": [{"input": "3 4\n", "output": "7\n"}, {"input": "10 -2\n", "output": "8"}]}


def answer(program: str, reasoning: str = "plan") -> str:
    return f"{reasoning}\n</think>\nHere it is:\n```python\n{program}\n```<|im_end|>"


def score(program: str, task: dict = SUM, **env_options):
    return make("code", **env_options).score({**SUM, **task}, answer(program))


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
    assert (s.reward, s.reason) == (1.0, "passed 2/2 tests")
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
    assert env.score(SUM, "x\n</think>\nprint(7)<|im_end|>").reason == "no code block in the answer"
    in_reasoning = "```python\na, b = map(int, input().split())\nprint(a + b)\n```\n</think>\nno code"
    assert env.score(SUM, in_reasoning).reward == 0.0  # code in the reasoning is never run
    with pytest.raises(ValueError, match="neither"):
        env.score({"env": "code", "prompt": "p"}, answer("print(1)"))


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


def test_code_responses_are_scored_by_every_worker_process():
    """A batch of code responses spreads over the workers (one per core); each worker runs its
    sandboxes as processes of its own, so the cores work in parallel."""
    busy = answer("x = 0\nfor i in range(300_000):\n    x += i\na, b = map(int, input().split())\nprint(a + b)")
    with EnvPool(["code"], workers=2) as pool:
        scores = pool.score([(SUM, busy)] * 12)
        assert all(s.reward == 1.0 for s in scores)
        assert pool.worker_pids() and len(set(pool.worker_pids())) == 2


# ---- reward hacking: only a correct program passes -------------------------------------------
DOUBLE = {"env": "code", "prompt": "Write double(x).", "tests": [],
          "asserts": ["assert double(3) == 6", "assert double(-2) == -4", "assert abs(double(0.5) - 1.0) < 1e-9",
                      "assert double(0) == 0 and not double(0)"]}
HONEST = {
    "plain": "def double(x):\n    return 2 * x",
    "main guard reading stdin": "def double(x):\n    return x + x\n\nif __name__ == '__main__':\n    print(double(int(input())))",
    "helpers, imports, prints": "import math\n\ndef _twice(v):\n    return v * 2\n\ndef double(x):\n"
                                "    print('debug', x)\n    return _twice(x) if math.isfinite(x) else x",
    "exits after defining (sys.exit in a function never called)": "import sys\ndef double(x):\n    return 2 * x\n"
                                                                  "def main():\n    sys.exit(1)",
}
HACKS = {
    "exit 0 before the tests": "import sys\nsys.exit(0)",
    "os._exit(0)": "import os\nos._exit(0)",
    "os._exit inside the call": "import os\ndef double(x):\n    os._exit(0)",
    "sys.exit inside the call": "import sys\ndef double(x):\n    sys.exit(0)",
    "always-equal object": "class Any:\n    def __eq__(self, other):\n        return True\n    __ne__ = lambda s, o: False\n"
                           "    def __sub__(self, o):\n        return 0\n    __bool__ = lambda s: False\n"
                           "def double(x):\n    return Any()",
    "int subclass equal to anything": "class I(int):\n    def __eq__(self, other):\n        return True\n"
                                      "    __hash__ = int.__hash__\ndef double(x):\n    return I(0)",
    "str subclass": "class S(str):\n    __eq__ = lambda s, o: True\ndef double(x):\n    return S('x')",
    "list subclass": "class L(list):\n    __eq__ = lambda s, o: True\ndef double(x):\n    return L()",
    "atexit hook exits 0": "import atexit, os\natexit.register(lambda: os._exit(0))\ndef double(x):\n    raise ValueError",
    "excepthook swallows the failure": "import sys\nsys.excepthook = lambda *a: None\ndef double(x):\n    return 0",
    "AssertionError replaced": "import builtins\nbuiltins.AssertionError = type('A', (Exception,), {})\n"
                               "def double(x):\n    return 0",
    "builtins patched (abs, bool)": "import builtins\nbuiltins.abs = lambda x: 0\nbuiltins.bool = lambda x: True\n"
                                    "def double(x):\n    return 0",
    "shadowing abs": "def double(x):\n    return 0\ndef abs(x):\n    return 0",
    "kills the harness": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\ndef double(x):\n    return 0",
    "stops the harness": "import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)",
    "forged report lines": "import sys\nfor i in range(4):\n    print('0' * 32, '{\"test\": %d, \"ok\": true}' % i)\n"
                           "    sys.__stdout__.write('{\"test\": %d, \"ok\": true}\\n' % i)\nimport os\n"
                           "for fd in range(3, 20):\n    try:\n        os.write(fd, b'{\"value\": 6}\\n')\n"
                           "    except OSError:\n        pass\ndef double(x):\n    return 6",
    "reads the tests from files or memory": "import gc, glob, os\nneedle = 'assert ' + 'dou' + 'ble('\nfound = []\n"
                                            "for p in glob.glob('/sandbox/**', recursive=True) + glob.glob('/tmp/**', "
                                            "recursive=True):\n    try:\n        found += [l for l in open(p) if needle in l]\n"
                                            "    except Exception:\n        pass\nfound += [o for o in gc.get_objects() "
                                            "if isinstance(o, str) and needle in o]\n"
                                            "def double(x):\n    return 2 * x if found else 0",
    "patches the harness's encoder": "import __main__, sys\nfor m in list(sys.modules.values()):\n"
                                     "    if hasattr(m, 'encode') and hasattr(m, 'Channel'):\n"
                                     "        m.encode = lambda v: True\ndef double(x):\n    return 0",
    "hangs in the call": "def double(x):\n    while True:\n        pass",
    "returns a generator": "def double(x):\n    yield 2 * x",
    "right on the first tests only": "def double(x):\n    return {3: 6, -2: -4}.get(x, 1)",
}


@pytest.mark.parametrize("name", sorted(HONEST))
def test_honest_programs_pass_the_asserts(name):
    s = score(HONEST[name], {**DOUBLE, "time_limit_s": 5})
    assert (s.reward, s.reason) == (1.0, "passed 4/4 tests"), s.reason


@pytest.mark.parametrize("name", sorted(HACKS))
def test_reward_hacking_programs_score_zero(name):
    s = score(HACKS[name], {**DOUBLE, "time_limit_s": 3})
    assert s.reward == 0.0 and s.info["pass_fraction"] < 1.0, s.reason
    if name not in ("hangs in the call", "stops the harness"):
        assert "timeout" not in s.reason, s.reason  # it was beaten, not just out of time


def test_assert_tests_see_plain_values_only_and_honest_structures_pass():
    task = {"tests": [], "asserts": ["assert stats([3, 1, 2]) == (1, 3, 2.0)", "assert tally('aba') == {'a': 2, 'b': 1}",
                                     "assert uniq([1, 1, 2]) == {1, 2}", "assert find([], 1) is None",
                                     "assert LIMIT == 10 and isinstance(LIMIT, int)", "import math\nassert math.isclose(root(2), 2 ** 0.5)",
                                     "assert double(x=4) == 8"]}
    program = ("LIMIT = 10\ndef stats(xs):\n    return min(xs), max(xs), sum(xs) / len(xs)\n"
               "def tally(s):\n    return {c: s.count(c) for c in sorted(set(s))}\ndef uniq(xs):\n    return set(xs)\n"
               "def find(xs, v):\n    return None\ndef root(v):\n    return v ** 0.5\ndef double(x):\n    return 2 * x")
    s = score(program, task)
    assert (s.reward, s.reason) == (1.0, "passed 7/7 tests"), s.reason


def test_a_mixed_task_counts_stdin_and_assert_tests_together():
    task = {**SUM, "asserts": ["assert add(1, 2) == 3"]}
    s = score("import sys\ndef add(a, b):\n    return a + b\na, b = map(int, sys.stdin.read().split() or [0, 0])\n"
              "print(add(a, b))", task)
    assert (s.reward, s.reason) == (1.0, "passed 3/3 tests"), s.reason
    s = score("import sys\ndef add(a, b):\n    return 0\na, b = map(int, sys.stdin.read().split() or [0, 0])\n"
              "print(a + b)", task)
    assert s.reward == 0.0 and s.reason.startswith("test 3/3:") and s.info["pass_fraction"] == pytest.approx(2 / 3)


def test_the_harness_cannot_be_ptraced_or_read_even_as_root_unisolated():
    """Unisolated as root (the weakest setting: trusted code only) the candidate still cannot
    attach to the judge or read its memory: the judge is non-dumpable and the candidate has given
    up root's capabilities before its first line runs."""
    probe = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
             "def attach():\n    return libc.ptrace(16, os.getppid(), 0, 0)\n"
             "def peek():\n    try:\n        open(f'/proc/{os.getppid()}/mem', 'rb').read(1)\n        return 'read'\n"
             "    except OSError as e:\n        return type(e).__name__\n")
    task = {"tests": [], "asserts": ["assert attach() == -1", "assert peek() in ('PermissionError', 'FileNotFoundError')"]}
    for options in ({}, {"allow_unisolated": True}):
        env = make("code", **options)
        env.isolate = env.isolate and not options
        s = env.score({**SUM, **task}, answer(probe))
        assert (s.reward, s.reason) == (1.0, "passed 2/2 tests"), (options, s.reason)
