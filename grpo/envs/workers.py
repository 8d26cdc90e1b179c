"""Verifier calls in worker processes, under deadlines that really stop them.

A verifier is trusted code fed hostile input: a model's answer can send a symbolic evaluator into
an exponent tower, and Python stuck inside C code cannot be interrupted from another thread. So
every per-sample call (`Environment.score`, `Environment.step`) runs in one of N worker processes
(`python -m grpo.envs.scorer`), each holding its own instances of the run's environments. A call
past its deadline gets its worker killed (with what it started: sandbox runs die with their
caller) and replaced, and returns an error the caller turns into reward 0; nothing keeps running.
Workers also die with the pool's process (PDEATHSIG, tied to the pool's long-lived spawner thread).

    pool = WorkerPool({"math": EnvSpec.of(MathEnv, {})}, size=2)
    [(value, error), ...] = pool.run([Call("math", "score", (task, text), timeout_s=10)])
    pool.close()

Messages are length-prefixed pickles over the worker's stdin/stdout; the worker's own prints go
to its stderr.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import importlib
import os
import pickle
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable

STARTUP_TIMEOUT_S = 300.0  # imports (sympy, jsonschema) on a busy 2-core machine take seconds, not minutes


@dataclass(frozen=True)
class EnvSpec:
    """How a worker builds an environment: its class (module + name) and constructor options."""
    module: str
    qualname: str
    options: dict

    @classmethod
    def of(cls, env_class: type, options: dict) -> "EnvSpec":
        if env_class.__module__ == "__main__" or "<locals>" in env_class.__qualname__:
            raise ValueError(f"environment class {env_class.__qualname__}: scoring workers import environments "
                             "by module and name; define it at the top level of an importable module")
        return cls(env_class.__module__, env_class.__qualname__, dict(options))

    def build(self):
        obj = importlib.import_module(self.module)
        for part in self.qualname.split("."):
            obj = getattr(obj, part)
        return obj(**self.options)


@dataclass(frozen=True)
class Call:
    env: str
    method: str  # a method of the environment: "score" or "step"
    args: tuple
    timeout_s: float


def send(stream, obj) -> None:
    send_bytes(stream, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def send_bytes(stream, data: bytes) -> None:
    stream.write(struct.pack(">Q", len(data)) + data)
    stream.flush()


def recv(fd: int):
    """One message from a raw file descriptor; EOFError when the other side is gone."""
    def exactly(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = os.read(fd, n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf
    return pickle.loads(exactly(struct.unpack(">Q", exactly(8))[0]))


class Worker:
    def __init__(self, proc: subprocess.Popen, tmp: str):
        self.proc, self.tmp = proc, tmp
        self.fd = proc.stdout.fileno()
        self.ready = False

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the worker and anything in its process group
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()
        shutil.rmtree(self.tmp, ignore_errors=True)  # sandbox directories of an interrupted run


class WorkerPool:
    """`size` worker processes, each with the environments of `specs`; calls run in parallel."""

    def __init__(self, specs: dict[str, EnvSpec], size: int):
        self.specs, self.size = specs, max(1, size)
        self._spawner = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoring-spawner")
        self.workers = [self._spawn() for _ in range(self.size)]
        for w in self.workers:
            self._wait_ready(w, time.monotonic() + STARTUP_TIMEOUT_S)

    def _spawn(self) -> Worker:
        tmp = tempfile.mkdtemp(prefix="scoring-worker-")
        env = {**os.environ, "TMPDIR": tmp, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        cmd = [sys.executable, "-m", "grpo.envs.scorer", str(os.getpid())]
        proc = self._spawner.submit(subprocess.Popen, cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    bufsize=0, env=env, start_new_session=True).result()
        send(proc.stdin, self.specs)
        return Worker(proc, tmp)

    def _wait_ready(self, w: Worker, deadline: float) -> None:
        """Blocks until the worker built its environments; raises with the worker's error."""
        ready, _, _ = select.select([w.fd], [], [], max(0.0, deadline - time.monotonic()))
        try:
            msg = recv(w.fd) if ready else ("error", "did not start in time")
        except EOFError:
            msg = ("error", f"exited with status {w.proc.wait()} while starting (see its stderr)")
        if msg[0] != "ready":
            w.kill()
            raise RuntimeError(f"scoring worker: {msg[1]}")
        w.ready = True

    def run(self, calls: list[Call], on_result: Callable[[int, Any, str | None], None] | None = None
            ) -> list[tuple[Any, str | None]]:
        """(value, None) or (None, reason) per call, in order; `on_result(i, value, error)` as each ends."""
        results: list = [None] * len(calls)
        todo = collections.deque(range(len(calls)))
        busy: dict[Worker, tuple[int, float]] = {}

        def finish(i: int, value, error) -> None:
            results[i] = (value, error)
            if on_result:
                on_result(i, value, error)

        while todo or busy:
            for w in self.workers:
                if todo and w.ready and w not in busy:
                    i = todo.popleft()
                    c = calls[i]
                    try:
                        send(w.proc.stdin, (c.env, c.method, c.args))
                    except BrokenPipeError:  # died idle: the call goes to another worker
                        todo.appendleft(i)
                        self._replace(w)
                        break
                    busy[w] = (i, time.monotonic() + c.timeout_s)
            waiting = list(busy) + [w for w in self.workers if not w.ready]
            if not waiting:
                raise RuntimeError("no scoring worker is left")
            wait_s = min((d for _, d in busy.values()), default=time.monotonic() + 1.0) - time.monotonic()
            readable, _, _ = select.select([w.fd for w in waiting], [], [], max(0.0, wait_s))
            for w in [w for w in waiting if w.fd in readable]:
                try:
                    msg = recv(w.fd)
                except EOFError:
                    if w in busy:
                        i, _ = busy.pop(w)
                        finish(i, None, f"error: scoring worker died (exit status {w.proc.wait()})")
                    self._replace(w, restart=w.ready)  # one that dies while starting is not retried
                    continue
                if not w.ready:  # a replacement that finished starting
                    w.ready = msg[0] == "ready"
                    if not w.ready:
                        self._replace(w, restart=False)
                    continue
                i, _ = busy.pop(w)
                finish(i, *msg)
            now = time.monotonic()
            for w, (i, deadline) in list(busy.items()):
                if now >= deadline:
                    del busy[w]
                    finish(i, None, f"timeout after {calls[i].timeout_s:g}s")
                    self._replace(w)
        return results

    def _replace(self, w: Worker, restart: bool = True) -> None:
        """Kill a worker and start its successor (not waited for: it joins once ready)."""
        w.kill()
        self.workers.remove(w)
        if restart:
            self.workers.append(self._spawn())

    def wait_ready(self) -> None:
        """Until every replacement has finished starting (e.g. before measuring an idle pool)."""
        for w in [w for w in self.workers if not w.ready]:
            try:
                self._wait_ready(w, time.monotonic() + STARTUP_TIMEOUT_S)
            except RuntimeError:
                self.workers.remove(w)

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers]

    def close(self) -> None:
        for w in self.workers:
            w.kill()
        self.workers = []
        self._spawner.shutdown()
