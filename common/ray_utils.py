"""Ray plumbing shared by the RL stages: start or join a cluster, and turn plain classes into actors.

Actors are the project's plain classes (PolicyTrainer, a rollout backend, environments) wrapped
with `ray.remote` here, so every one of them can be run and debugged without Ray.
"""
from __future__ import annotations

import os
from typing import Any


def init_ray(address: str | None = None, *, num_cpus: int | None = None) -> dict:
    """Join `address` (or $RAY_ADDRESS) when given, else start a local instance; returns its resources."""
    import ray

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        env_vars = {k: v for k, v in os.environ.items()
                    if k.startswith(("VLLM_", "HF_", "TOKENIZERS_", "OMP_", "PYTHONPATH"))}
        ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                 log_to_driver=True, runtime_env={"env_vars": env_vars} if env_vars else None)
    return ray.cluster_resources()


def actor(cls: type, *args: Any, num_cpus: float = 0, num_gpus: float = 0, name: str | None = None, **kwargs):
    """Start `cls(*args, **kwargs)` as a Ray actor. num_cpus=0 by default: the RL loop is
    synchronous (phases take turns), so actors need not reserve cores they rarely use at once."""
    import ray

    opts = {"num_cpus": num_cpus, "num_gpus": num_gpus}
    if name:
        opts["name"] = name
    return ray.remote(**opts)(cls).remote(*args, **kwargs)


def get(refs):
    import ray

    return ray.get(refs)


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
