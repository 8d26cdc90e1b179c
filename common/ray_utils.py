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


class ActorGroup:
    """N actors of one class forming one torch.distributed group (FSDP2 ranks); actor i is rank i.

    `cls(*args, rank=i, world_size=n, **kwargs)` must accept its rank, and with n > 1 expose
    `join(master_addr, master_port)`: rank 0's host and a free port there are found from inside
    rank 0's actor, so the group forms wherever Ray placed it (one node or several).
    """

    def __init__(self, cls: type, n: int, *args: Any, num_cpus: float = 0, num_gpus: float = 0, **kwargs: Any):
        self.actors = [actor(cls, *args, num_cpus=num_cpus, num_gpus=num_gpus, rank=i, world_size=n, **kwargs)
                       for i in range(n)]
        if n > 1:
            addr, port = self.rank0_address()
            get([a.join.remote(addr, port) for a in self.actors])

    def rank0_address(self) -> tuple[str, int]:
        """Rank 0's node address and a free port there: where a new group's store can listen."""
        return get(self.actors[0].__ray_call__.remote(lambda _self: free_address()))

    def call(self, method: str, *args: Any) -> list:
        """Call `method(*args)` on every rank (arguments go to the object store once); one ref per rank."""
        import ray

        args = tuple(a if isinstance(a, ray.ObjectRef) or len(self.actors) == 1 else ray.put(a) for a in args)
        return [getattr(a, method).remote(*args) for a in self.actors]


def free_address() -> tuple[str, int]:
    """(this node's address, a free TCP port on it)."""
    import socket

    from ray.util import get_node_ip_address

    with socket.socket() as s:
        s.bind(("", 0))
        return get_node_ip_address(), s.getsockname()[1]


def get(refs):
    import ray

    return ray.get(refs)


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
