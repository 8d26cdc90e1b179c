"""A scoring worker process (started by grpo.envs.workers.WorkerPool): builds the run's
environments, then answers (env, method, args) calls until its stdin closes. It dies with the pool
(PDEATHSIG), and its prints go to stderr, never into the protocol on stdout."""
import ctypes
import os
import pickle
import signal
import sys

from grpo.envs import Score
from grpo.envs.workers import recv, send, send_bytes

PR_SET_PDEATHSIG = 1


def main() -> None:
    parent = int(sys.argv[1])
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the pool died before the line above
        os._exit(1)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    try:
        envs = {name: spec.build() for name, spec in recv(0).items()}
    except Exception as e:  # noqa: BLE001 - reported to the pool, which raises it
        send(out, ("error", f"{type(e).__name__}: {e}"))
        return
    send(out, ("ready", None))
    while True:
        try:
            env, method, args = recv(0)
        except EOFError:
            return
        try:
            value = getattr(envs[env], method)(*args)
            if method == "score" and not isinstance(value, Score):
                raise TypeError(f"{env}.score returned {type(value).__name__}, not a Score")
            data = pickle.dumps((value, None), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001 - any verifier failure is reported with its reason
            data = pickle.dumps((None, f"error: {type(e).__name__}: {e}"))
        send_bytes(out, data)


if __name__ == "__main__":
    main()
