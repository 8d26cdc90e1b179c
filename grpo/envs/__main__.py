"""Score given responses offline, to test a verifier without training.

    python -m grpo.envs score --env code --input rows.jsonl [--workers 2] [--timeout-s 10]
    python -m grpo.envs list

Each input row is a task row (the schema of grpo.tasks: "env", "messages" or "prompt", the
verifier's fields) plus "response": the completion text to score. `--env` sets the environment of
rows that name none. Rows are scored as in the RL stages (worker processes, a hard deadline per
row); each prints a line (id, reward, reason) as soon as it is scored, then a summary follows.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from grpo.envs import DEFAULT_TIMEOUT_S, EnvPool, load_modules
from grpo.tasks import TaskError, load_tasks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m grpo.envs", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("score", help="score the responses of a JSONL file")
    s.add_argument("--input", required=True)
    s.add_argument("--env", help="environment of rows that name none")
    s.add_argument("--workers", type=int, default=0, help="scoring worker processes (0: one per core)")
    s.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S,
                   help="deadline per response in seconds, as grpo.score_timeout_s (envs may set their own)")
    s.add_argument("--modules", default="", help="comma-separated modules that register more environments")
    s.add_argument("--options", default="{}", help='JSON options per environment, e.g. {"code": {"wall_s": 5}}')
    sub.add_parser("list", help="list the registered environments")
    args = p.parse_args(argv)
    modules = [m for m in getattr(args, "modules", "").split(",") if m]
    if args.cmd == "list":
        print("\n".join(load_modules(modules)))
        return 0
    try:
        rows = load_tasks(args.input, default_env=args.env, require=("response",))
    except TaskError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    names = sorted({r["env"] for r in rows})
    unknown = sorted(set(names) - set(load_modules(modules)))
    if unknown:
        print(f"error: no environment named {unknown}; registered: {load_modules(modules)}", file=sys.stderr)
        return 2
    pool = EnvPool(names, args.timeout_s, json.loads(args.options), modules, args.workers)
    t0 = time.perf_counter()
    try:
        scores = pool.score([(r, r["response"]) for r in rows],
                            on_result=lambda i, sc: print(f"{rows[i]['id']}\t{sc.reward:g}\t{sc.reason}", flush=True))
    finally:
        pool.close()
    wall = time.perf_counter() - t0
    mean = sum(sc.reward for sc in scores) / max(len(scores), 1)
    print(f"# {len(rows)} rows, mean reward {mean:.3f}, {wall:.2f}s ({len(rows) / max(wall, 1e-9):.1f} rows/s)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
