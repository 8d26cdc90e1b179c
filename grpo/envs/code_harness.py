"""Assert-test harness: the sandbox's entry point for a code task's `asserts` (stdlib only).

The candidate program must not be able to pass a test it does not solve, so it never judges itself:

  judge (this process)                        candidate (forked child)
    forks before it reads anything secret  ->   stdin -> /dev/null, stdout -> stderr, capabilities
    non-dumpable: the child cannot ptrace it    dropped, then runs solution.py (as module `solution`)
    reads the tests and a nonce from stdin      reports its top-level names
    runs the tests (one namespace), each <->    answers calls: plain arguments in, a plain value out
    calls into the candidate by proxy
    prints "<nonce> {json}" per test on stdout

The tests and the nonce are read only after the fork, so they never exist in the candidate's memory;
the candidate has no handle on the judge's stdout. Every value crossing from the candidate is JSON
decoded into a plain value (None, bool, int, float, str, and lists, tuples, dicts and sets of them),
so an object that "equals anything" cannot come back, and every comparison runs here. Exiting early
(`sys.exit`, `os._exit`, exit hooks), killing the judge, or hanging all end without a report, and
the host counts a test as passed only on its report. Candidate names that shadow builtins are not
taken (a test's `abs` or `len` stays the real one). Calls get copies of their arguments.
"""
import builtins
import ctypes
import json
import os
import sys

MAX_MESSAGE = 1 << 20  # bytes per message from the candidate
PR_SET_DUMPABLE, PR_SET_SECUREBITS = 4, 28
SECUREBITS_NO_ROOT = 0x2F  # NOROOT, NO_SETUID_FIXUP (both locked), KEEP_CAPS locked off
CAP_VERSION_3 = 0x20080522


class CandidateError(Exception):
    """The candidate's call raised, returned a non-plain value, or the candidate is gone."""


def encode(v):
    t = type(v)  # exact types: a subclass of int with its own __eq__ is not plain
    if v is None or t in (bool, int, float, str):
        return v
    if t is list:
        return [encode(x) for x in v]
    if t is tuple:
        return {"t": [encode(x) for x in v]}
    if t in (set, frozenset):
        return {"s" if t is set else "f": [encode(x) for x in v]}
    if t is dict:
        return {"d": [[encode(k), encode(x)] for k, x in v.items()]}
    raise TypeError(f"a {t.__name__} is not a plain value")


def decode(j):
    """JSON (already only plain types) back to the values `encode` took; anything else raises."""
    if isinstance(j, list):
        return [decode(x) for x in j]
    if not isinstance(j, dict):
        return j
    if len(j) != 1 or not isinstance(next(iter(j.values())), list):
        raise ValueError("malformed value")
    (tag, items), = j.items()
    if tag == "t":
        return tuple(decode(x) for x in items)
    if tag in ("s", "f"):
        return (set if tag == "s" else frozenset)(decode(x) for x in items)
    if tag == "d" and all(isinstance(p, list) and len(p) == 2 for p in items):
        return {decode(k): decode(x) for k, x in items}
    raise ValueError("malformed value")


class Channel:
    """Newline-delimited JSON over a pair of pipe ends, with a size cap on what is read."""

    def __init__(self, read_fd: int, write_fd: int):
        self.read_fd, self.write_fd, self.buf = read_fd, write_fd, b""

    def send(self, obj) -> None:
        data = (json.dumps(obj) + "\n").encode()
        while data:
            data = data[os.write(self.write_fd, data):]

    def recv(self):
        while b"\n" not in self.buf:
            if len(self.buf) > MAX_MESSAGE:
                raise CandidateError("message from the program too large")
            chunk = os.read(self.read_fd, 65536)
            if not chunk:
                raise CandidateError("the program exited")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)


# ------------------------------------------------------------------------------ the candidate
def _drop_privileges(libc) -> None:
    """Running as root (a user namespace, or unisolated as root): lock out root's privileges, so
    the candidate cannot ptrace the judge. An unprivileged uid has none to drop."""
    if os.geteuid() != 0:
        return
    header = (ctypes.c_uint32 * 2)(CAP_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()
    if libc.prctl(PR_SET_SECUREBITS, SECUREBITS_NO_ROOT, 0, 0, 0) != 0 or libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "cannot drop privileges")


def candidate(chan: Channel, libc) -> None:
    """The child: becomes the candidate program, then serves calls. Never returns."""
    try:
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(2, 1)  # the candidate's prints go to stderr; stdout is the judge's alone
        _drop_privileges(libc)
        namespace = {"__name__": "solution", "__builtins__": builtins}
        with open("solution.py") as f:
            source = f.read()
    except BaseException as e:  # noqa: BLE001 - reported to the judge, which fails every test
        chan.send({"error": f"harness: {type(e).__name__}: {e}"})
        os._exit(1)
    try:
        exec(compile(source, "solution.py", "exec"), namespace)
    except BaseException as e:  # noqa: BLE001 - SystemExit too: a program that exits is not a solution
        chan.send({"error": f"the program raised {type(e).__name__}: {str(e)[:200]}"})
        os._exit(1)
    names = {}
    for k, v in namespace.items():
        if k.startswith("__"):
            continue
        if callable(v):
            names[k] = "function"
        else:
            try:
                names[k] = {"value": encode(v)}
            except (TypeError, ValueError, RecursionError):
                pass  # modules and other objects: tests cannot use them
    chan.send({"names": names})
    while True:
        req = chan.recv()
        try:
            value = namespace[req["call"]](*decode(req["args"]), **decode(req["kwargs"]))
            chan.send({"value": encode(value)})
        except BaseException as e:  # noqa: BLE001
            chan.send({"error": f"{req.get('call')}(...) raised {type(e).__name__}: {str(e)[:200]}"})


# ---------------------------------------------------------------------------------- the judge
class Remote:
    """A candidate function as the tests see it: a plain-valued call across the pipe."""

    def __init__(self, chan: Channel, name: str):
        self.chan, self.name = chan, name

    def __call__(self, *args, **kwargs):
        try:
            self.chan.send({"call": self.name, "args": encode(list(args)), "kwargs": encode(kwargs)})
        except TypeError as e:
            raise CandidateError(f"{self.name}: unsupported argument ({e})") from None
        msg = self.chan.recv()
        if not isinstance(msg, dict) or ("error" not in msg and "value" not in msg):
            raise CandidateError("malformed answer from the program")
        if "error" in msg:
            raise CandidateError(str(msg["error"])[:300])
        try:
            return decode(msg["value"])
        except (ValueError, TypeError, RecursionError) as e:
            raise CandidateError(f"{self.name} returned a malformed value ({e})") from None


def test_namespace(chan: Channel, names) -> dict:
    if not isinstance(names, dict):
        raise CandidateError("malformed names from the program")
    ns = {"__name__": "tests", "__builtins__": builtins}
    for k, v in names.items():
        if not isinstance(k, str) or not k.isidentifier() or hasattr(builtins, k):
            continue
        if v == "function":
            ns[k] = Remote(chan, k)
        elif isinstance(v, dict) and "value" in v:
            ns[k] = decode(v["value"])
    return ns


def judge(chan: Channel) -> None:
    payload = json.loads(sys.stdin.readline())
    nonce, tests = payload["nonce"], payload["tests"]

    def report(**fields) -> None:
        sys.stdout.write(f"{nonce} {json.dumps(fields)}\n")
        sys.stdout.flush()

    try:
        first = chan.recv()
        if isinstance(first, dict) and "error" in first:
            raise CandidateError(str(first["error"])[:300])
        ns = test_namespace(chan, first.get("names") if isinstance(first, dict) else None)
    except (CandidateError, ValueError, TypeError) as e:
        for i in range(len(tests)):
            report(test=i, ok=False, reason=str(e))
        return
    for i, test in enumerate(tests):
        try:
            exec(compile(test, f"<test {i + 1}>", "exec"), ns)
            report(test=i, ok=True)
        except BaseException as e:  # noqa: BLE001 - any failure of a test is its outcome
            reason = str(e) if isinstance(e, CandidateError) else type(e).__name__ + (f": {e}"[:200] if str(e) else "")
            report(test=i, ok=False, reason=reason)


def main() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # before the fork: the candidate can never ptrace us
    from_judge, to_child = os.pipe()  # (read end, write end)
    from_child, to_judge = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(to_child)
        os.close(from_child)
        candidate(Channel(from_judge, to_judge), libc)
    os.close(from_judge)
    os.close(to_judge)
    try:
        judge(Channel(from_child, to_child))
    finally:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except OSError:
            pass


if __name__ == "__main__":
    main()
