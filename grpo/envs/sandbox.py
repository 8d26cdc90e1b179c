"""Run untrusted (model-generated) Python programs, each in a throwaway sandbox.

Every run is a separate process (grpo/envs/sandbox_launcher.py) with, on Linux where the kernel
allows namespaces (as root, or unprivileged user namespaces):
  - its own mount namespace with a fresh tmpfs root: only /usr, /lib*, /bin and the interpreter's
    prefix (read-only), /dev/{null,zero,random,urandom} and a writable /sandbox and /tmp exist, so the
    project, home directories and every other host path are not there to read or write;
  - its own network namespace with no interface up (no network, loopback included), and its own
    PID, IPC and UTS namespaces: when the program exits or is killed, every process it started dies;
  - resource limits: CPU seconds, address space, file size, open files, process count; and, when
    started as root, an unprivileged uid of its own (root ignores the process-count limit);
  - a clean environment (PATH, HOME, LANG only), the interpreter in isolated mode without
    site-packages (`-I -S`), a wall-clock limit and capped stdout/stderr enforced from outside.

Where namespaces are unavailable the sandbox refuses to run unless `isolate=False` is asked for
explicitly; then only the resource limits, the wall clock, the clean environment and a temporary
working directory apply, as the calling user (no filesystem, network or process isolation): fine
for trusted test programs only.
"""
from __future__ import annotations

import functools
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

LAUNCHER = str(Path(__file__).with_name("sandbox_launcher.py"))
PYTHON = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
SETUP_FAILED = 111
_uids = itertools.count()


@dataclass
class SandboxLimits:
    wall_s: float = 10.0
    cpu_s: float = 10.0
    memory_mb: int = 1024
    max_processes: int = 32
    max_output_bytes: int = 1 << 20  # per stream; more ends the run
    max_file_mb: int = 16
    tmpfs_mb: int = 64  # the whole writable filesystem


@dataclass
class RunResult:
    # ok | exit_error | timeout | cpu_limit | memory_limit | output_limit | file_limit | sandbox_error
    status: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def describe(self) -> str:
        """One line for a reward's reason."""
        tail = self.stderr.strip().splitlines()[-1:] if self.status in ("exit_error", "sandbox_error") else []
        return f"{self.status}" + (f": {tail[0][:200]}" if tail else "")


class SandboxUnavailable(RuntimeError):
    """Namespaces cannot be created here, and unisolated runs were not allowed."""


def _sandbox_uid() -> int | None:
    """Root gets a fresh unprivileged uid per run (its process count is then its own)."""
    if os.geteuid() != 0:
        return None
    return 200_000 + (os.getpid() % 1000) * 1000 + next(_uids) % 1000


def _classify(code: int | None, stderr: str, timed_out: bool, too_much_output: bool) -> str:
    if too_much_output:
        return "output_limit"
    if timed_out:
        return "timeout"
    if code == 0:
        return "ok"
    if code == SETUP_FAILED and "sandbox setup failed" in stderr:
        return "sandbox_error"
    if code == 128 + signal.SIGXCPU:
        return "cpu_limit"
    if code == 128 + signal.SIGXFSZ:
        return "file_limit"
    if "File too large" in stderr:  # Python ignores SIGXFSZ: the write fails instead
        return "file_limit"
    if "MemoryError" in stderr:
        return "memory_limit"
    return "killed" if code == 128 + signal.SIGKILL else "exit_error"


def _read_capped(stream, cap: int, out: list, over: threading.Event, proc) -> None:
    total = 0
    while chunk := stream.read(65536):
        total += len(chunk)
        if total > cap:
            over.set()
            _kill(proc)
            break
        out.append(chunk)


def _kill(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and PID 1 of the namespace (it takes the rest)
    except ProcessLookupError:
        pass


def run(program: str, stdin: str = "", limits: SandboxLimits | None = None, *, isolate: bool = True,
        files: dict[str, str] | None = None) -> RunResult:
    """Run `program` (Python source, the entry point main.py) with `stdin`, beside `files` (name ->
    text, in the program's directory); never raises for anything the program does."""
    if isolate and not namespaces_available():
        raise SandboxUnavailable("this machine cannot create namespaces (need root or unprivileged user "
                                 "namespaces); refusing to run untrusted code without isolation")
    return _run(program, stdin, limits or SandboxLimits(), isolate, files or {})


def _run(program: str, stdin: str, limits: SandboxLimits, isolate: bool, files: dict[str, str]) -> RunResult:
    with tempfile.TemporaryDirectory(prefix="sandbox-") as host:  # config (and, unisolated, the program)
        os.chmod(host, 0o700)
        files = {**files, "main.py": program}
        cfg = {"isolate": isolate, "root": f"{host}/root", "workdir": f"{host}/work", "entry": "main.py",
               "files": files, "python": PYTHON, "python_prefix": sys.base_prefix,
               "uid": _sandbox_uid() if isolate else None, "limits": asdict(limits), "tmpfs_mb": limits.tmpfs_mb,
               "caller_pid": os.getpid()}
        os.mkdir(cfg["root"])
        if not isolate:  # the program runs from a host directory, as the caller
            os.mkdir(cfg["workdir"])
            for name, text in files.items():
                Path(cfg["workdir"], name).write_text(text)
        Path(host, "config.json").write_text(json.dumps(cfg))
        t0 = time.perf_counter()
        proc = subprocess.Popen([PYTHON, "-I", "-S", "-B", LAUNCHER, f"{host}/config.json"], cwd=host,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={"PATH": "/usr/bin:/bin"}, start_new_session=True)
        code, out, err, timed_out, too_much = _communicate(proc, stdin.encode(), limits)
        if not isolate:
            _kill(proc)  # leftovers of an unisolated run (those that left the process group survive)
        return RunResult(_classify(code, err, timed_out, too_much), code, out, err, time.perf_counter() - t0)


def _communicate(proc, stdin: bytes, limits: SandboxLimits) -> tuple[int, str, str, bool, bool]:
    """Feed stdin, collect capped stdout/stderr, enforce the wall clock: (code, out, err, timed out,
    output over the cap)."""
    out, err, over = [], [], threading.Event()
    readers = [threading.Thread(target=_read_capped, args=(pipe, limits.max_output_bytes, buf, over, proc),
                                daemon=True) for pipe, buf in ((proc.stdout, out), (proc.stderr, err))]
    for t in (*readers, threading.Thread(target=_feed, args=(proc.stdin, stdin), daemon=True)):
        t.start()
    timed_out = False
    try:
        code = proc.wait(timeout=limits.wall_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill(proc)
        code = proc.wait()
    for t in readers:
        t.join(timeout=5)
    text = lambda chunks: b"".join(chunks).decode(errors="replace")  # noqa: E731
    return code, text(out), text(err), timed_out, over.is_set()


def _feed(pipe, data: bytes) -> None:
    try:
        pipe.write(data)
        pipe.close()
    except (BrokenPipeError, OSError):
        pass  # the program exited without reading all of its input


@functools.cache
def namespaces_available() -> bool:
    """Whether an isolated sandbox can be made here (tried once per process)."""
    return sys.platform == "linux" and _run("print('ok')", "", SandboxLimits(wall_s=20), True, {}).stdout == "ok\n"
