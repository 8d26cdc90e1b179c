"""Submit a stage to a Ray cluster as a Ray job (the Ray Jobs API, as `ray job submit` does).

    python -m stages.submit STAGE [key=value ...]   (make submit STAGE=rlvr RAY_ADDRESS=http://head:8265)
    python -m stages.submit --status JOB_ID         (make submit-status JOB=...)
    python -m stages.submit --logs JOB_ID           (make submit-logs JOB=...)

The working directory (this checkout, without runs/, .venv/ and .git/) is uploaded as the job's
runtime environment, so every node runs the same code; the nodes need the project's Python
environment (`--python`, default `python`). Outputs go to `runs_dir`, which on a multi-node
cluster must be storage every node and you can reach (default: this checkout's runs/ as an
absolute path, right for a one-machine cluster). RAY_ADDRESS is the dashboard address.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGES = ("sft", "rlvr", "genrm", "rlhf", "eval")
EXCLUDES = ["runs/", ".venv/", ".git/", "**/__pycache__/", "*.pyc", ".pytest_cache/"]
FORWARDED_ENV = ("HF_", "VLLM_", "WANDB_", "MLFLOW_", "TOKENIZERS_", "OMP_")


def client(address: str | None):
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise SystemExit("error: no cluster address: set RAY_ADDRESS=http://<head>:8265 (the dashboard address)")
    return JobSubmissionClient(address)


def entrypoint(stage: str, overrides: list[str], python: str, config: str | None) -> str:
    if not any(o.startswith("runs_dir=") for o in overrides):
        overrides = [f"runs_dir={REPO / 'runs'}", *overrides]
    return shlex.join([python, "-m", f"stages.{stage}", "--config", config or f"configs/{stage}.yaml", *overrides])


def submit(args) -> int:
    c = client(args.address)
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
    job_id = c.submit_job(
        entrypoint=entrypoint(args.stage, args.overrides, args.python, args.config),
        runtime_env={"working_dir": str(REPO), "excludes": EXCLUDES, "env_vars": env},
        entrypoint_num_cpus=args.num_cpus, entrypoint_num_gpus=args.num_gpus,
        metadata={"stage": args.stage})
    print(f"submitted {args.stage} as job {job_id}", flush=True)
    if args.no_wait:
        return 0
    return follow(c, job_id)


def follow(c, job_id: str) -> int:
    """Stream the job's logs until it ends; exit 0 only if it succeeded."""
    async def tail():
        async for lines in c.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    try:
        asyncio.run(tail())
    except Exception as e:  # noqa: BLE001 - log streaming is best effort; the status decides
        print(f"(log streaming stopped: {e})", file=sys.stderr)
    while str(c.get_job_status(job_id)).split(".")[-1] not in ("SUCCEEDED", "FAILED", "STOPPED"):
        time.sleep(1)
    status = str(c.get_job_status(job_id)).split(".")[-1]
    print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stages.submit", description=__doc__.split("\n\n")[0])
    p.add_argument("stage", nargs="?", choices=STAGES)
    p.add_argument("overrides", nargs="*", help="key=value config overrides (exp=..., runs_dir=...)")
    p.add_argument("--address", help="dashboard address (default: $RAY_ADDRESS)")
    p.add_argument("--config", help="the stage's YAML (default: configs/<stage>.yaml)")
    p.add_argument("--python", default="python", help="the project's Python on the cluster nodes")
    p.add_argument("--num-cpus", type=float, default=1, help="CPUs reserved for the stage's driver")
    p.add_argument("--num-gpus", type=float, default=0, help="GPUs reserved for the driver (the actors ask for theirs)")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    p.add_argument("--status", metavar="JOB_ID")
    p.add_argument("--logs", metavar="JOB_ID")
    args = p.parse_intermixed_args(argv)
    if args.status:
        print(client(args.address).get_job_status(args.status))
        return 0
    if args.logs:
        print(client(args.address).get_job_logs(args.logs), end="")
        return 0
    if not args.stage:
        p.error("a stage is required")
    return submit(args)


if __name__ == "__main__":
    raise SystemExit(main())
