"""Sandbox launcher: runs as its own process (`python -I -S -B sandbox_launcher.py CONFIG`), stdlib
only, and turns into the sandboxed program. See grpo/envs/sandbox.py for the design and limits.

With namespaces (the default where the kernel allows them):
  1. unshare mount, network, PID, IPC and UTS namespaces (and a user namespace when not root);
  2. fork: the child is PID 1 of the new PID namespace, so when it exits (or the launcher is
     killed, through PDEATHSIG) the kernel kills every process the program started; the program
     itself runs as PID 2, since PID 1 ignores signals such as SIGXCPU;
  3. the child builds a new root on a fresh tmpfs: /usr, /lib*, /bin and the interpreter's prefix
     bound read-only, /dev/{null,zero,random,urandom}, a writable /sandbox (the program) and /tmp;
     pivot_root into it and detach the old root, so no host path (project, home) exists any more;
  4. resource limits, a dedicated unprivileged uid when started as root, no_new_privs, then exec.
The network namespace has no interfaces up: no network at all. The launcher dies with its caller
(PDEATHSIG), and with it the whole run.
"""
import ctypes
import json
import os
import resource
import signal
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
MNT_DETACH, PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 2, 1, 38
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
SETUP_FAILED = 111

libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src, dst, fstype, flags, data=None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(libc.mount(enc(src), enc(dst), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {dst}")


def _bind(root: str, path: str, writable: bool = False) -> None:
    """Show host `path` at the same place under `root` (read-only unless asked); symlinks stay symlinks."""
    if not os.path.lexists(path):
        return
    dst = root + path
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.islink(path):
        if not os.path.lexists(dst):
            os.symlink(os.readlink(path), dst)
        return
    if os.path.isdir(path):
        os.makedirs(dst, exist_ok=True)
    else:
        open(dst, "a").close()
    _mount(path, dst, None, MS_BIND | MS_REC)
    if not writable:
        _mount(None, dst, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _new_root(cfg: dict) -> None:
    root = cfg["root"]
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount leaks back to the host
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, f"size={cfg['tmpfs_mb']}m,mode=0755")
    for path in ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", cfg["python_prefix"]):
        _bind(root, path)
    for dev in ("null", "zero", "random", "urandom"):
        _bind(root, "/dev/" + dev, writable=True)
    _write_program(root, cfg)
    os.makedirs(root + "/.old")
    _check(libc.syscall(SYS_PIVOT_ROOT[os.uname().machine], root.encode(), (root + "/.old").encode()), "pivot_root")
    os.chdir("/")
    _check(libc.umount2(b"/.old", MNT_DETACH), "umount old root")
    os.rmdir("/.old")
    libc.sethostname(b"sandbox", 7)


def _write_program(root: str, cfg: dict) -> None:
    work = root + "/sandbox"
    os.makedirs(work)
    os.makedirs(root + "/tmp", mode=0o1777)
    os.chmod(root + "/tmp", 0o1777)
    for name, text in cfg["files"].items():
        with open(os.path.join(work, name), "w") as f:
            f.write(text)
    if cfg["uid"] is not None:
        for p in [work] + [os.path.join(work, n) for n in cfg["files"]]:
            os.chown(p, cfg["uid"], cfg["uid"])


def _limit_and_exec(cfg: dict, workdir: str) -> None:
    lim = cfg["limits"]
    cpu = int(lim["cpu_s"] + 0.999)
    for res, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)),
                       (resource.RLIMIT_AS, (lim["memory_mb"] << 20,) * 2),
                       (resource.RLIMIT_FSIZE, (lim["max_file_mb"] << 20,) * 2),
                       (resource.RLIMIT_NPROC, (lim["max_processes"],) * 2),
                       (resource.RLIMIT_NOFILE, (256, 256)), (resource.RLIMIT_CORE, (0, 0))):
        resource.setrlimit(res, value)
    if cfg["uid"] is not None:  # started as root: become an unprivileged uid of this sandbox's own
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    os.chdir(workdir)
    env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": "/tmp", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
    argv = [cfg["python"], "-I", "-S", "-B", cfg["entry"]]
    os.execve(argv[0], argv, env)


def main() -> None:
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    # A caller killed mid-run (a scorer past its deadline) takes its runs along: the program
    # inherits this across exec, and PID 1 of the namespace follows us.
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != cfg["caller_pid"]:  # the caller died before the line above
        os._exit(SETUP_FAILED)
    try:
        if not cfg["isolate"]:  # resource limits only (see sandbox.py): the program runs in a host dir
            _limit_and_exec(cfg, cfg["workdir"])
        flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
        uid, gid = os.geteuid(), os.getegid()
        if uid != 0:
            flags |= CLONE_NEWUSER
        _check(libc.unshare(flags), "unshare")
        if uid != 0:  # map ourselves to root inside the user namespace
            for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
    except Exception as e:  # noqa: BLE001 - reported to the caller as a sandbox failure
        print(f"sandbox setup failed: {e}", file=sys.stderr)
        os._exit(SETUP_FAILED)
    pid = os.fork()
    if pid == 0:  # PID 1 of the new namespace: builds the root, runs the program as PID 2, exits after it
        try:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            _new_root(cfg)
        except Exception as e:  # noqa: BLE001
            print(f"sandbox setup failed: {e}", file=sys.stderr)
            os._exit(SETUP_FAILED)
        _run_child(lambda: _limit_and_exec(cfg, "/sandbox"))  # not PID 1: signals act as usual
    _run_child(None, pid)


def _run_child(start, pid: int | None = None) -> None:
    """Fork `start` (or wait for `pid`), then exit with its status, 128 + signal if it was killed."""
    if pid is None:
        pid = os.fork()
        if pid == 0:
            try:
                start()
            except Exception as e:  # noqa: BLE001
                print(f"sandbox setup failed: {e}", file=sys.stderr)
            os._exit(SETUP_FAILED)
    _, status = os.waitpid(pid, 0)
    os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))


if __name__ == "__main__":
    main()
