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
        # Ray gives actors without CPU reservations OMP_NUM_THREADS=1: torch in the trainer would use
        # one core of many (the RL loop's phases mostly take turns, so each may use them all).
        env_vars.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0)) or 1))
        # Joining a cluster (e.g. as a Ray job): keep the job's runtime env (its working dir and
        # env vars); a runtime_env given here would replace it for every actor.
        ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                 log_to_driver=True, runtime_env={"env_vars": env_vars} if env_vars and not address else None)
    return ray.cluster_resources()


def actor(cls: type, *args: Any, num_cpus: float = 0, num_gpus: float = 0, name: str | None = None,
          placement: "Placement | None" = None, **kwargs):
    """Start `cls(*args, **kwargs)` as a Ray actor (in the next bundle of `placement`, if given).
    num_cpus=0 by default: the RL loop is synchronous (phases take turns), so actors need not
    reserve cores they rarely use at once."""
    import ray

    opts: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus}
    if name:
        opts["name"] = name
    if placement is not None:
        opts["scheduling_strategy"] = placement.next_bundle(num_gpus)
    return ray.remote(**opts)(cls).remote(*args, **kwargs)


class Placement:
    """One placement group for a stage's actors, a bundle per actor (GPUs as the config asks), so
    the whole topology is reserved at once or not at all: on a cluster a stage either gets every
    GPU it needs or says so, instead of starting half its actors and waiting forever."""

    def __init__(self, gpus_per_actor: list[float], strategy: str = "PACK", timeout_s: float = 300.0):
        import ray
        from ray.util.placement_group import placement_group

        # CPU 0.01: a bundle needs some resource; the actors' own requests are what count.
        self.bundles = [{"CPU": 0.01, **({"GPU": g} if g else {})} for g in gpus_per_actor]
        self.pg = placement_group(self.bundles, strategy=strategy)
        try:
            ray.get(self.pg.ready(), timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise RuntimeError(f"the cluster cannot place {len(self.bundles)} actors needing "
                               f"{sum(gpus_per_actor):g} GPUs in all (has {ray.cluster_resources()}); "
                               "lower the GPUs per worker or the number of workers") from None
        self.used = 0

    def next_bundle(self, num_gpus: float):
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if self.used >= len(self.bundles) or self.bundles[self.used].get("GPU", 0) < num_gpus:
            raise RuntimeError(f"placement: bundle {self.used} of {self.bundles} cannot hold an actor with "
                               f"{num_gpus} GPUs")
        self.used += 1
        return PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=self.used - 1)


class ActorGroup:
    """N actors of one class forming one torch.distributed group (FSDP2 ranks); actor i is rank i.

    `cls(*args, rank=i, world_size=n, **kwargs)` must accept its rank, and with n > 1 expose
    `join(master_addr, master_port)`: rank 0's host and a free port there are found from inside
    rank 0's actor, so the group forms wherever Ray placed it (one node or several).
    """

    def __init__(self, cls: type, n: int, *args: Any, num_cpus: float = 0, num_gpus: float = 0,
                 placement: Placement | None = None, **kwargs: Any):
        self.actors = [actor(cls, *args, num_cpus=num_cpus, num_gpus=num_gpus, rank=i, world_size=n,
                             placement=placement, **kwargs) for i in range(n)]
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


def to_wire(state: dict) -> dict:
    """Tensors as numpy arrays for Ray's object store, which hands numpy back without copying
    (torch tensors are pickled and copied: a tiny-model refit took ~28 ms that way, ~11 ms this
    way, measured). bfloat16, which numpy lacks, travels as its int16 bits."""
    import torch

    return {k: ("bfloat16", v.view(torch.int16).numpy()) if v.dtype == torch.bfloat16 else (None, v.numpy())
            for k, v in state.items()}


def from_wire(state: dict) -> dict:
    """The inverse of `to_wire` (read-only views of Ray's buffers); plain tensors pass unchanged."""
    import warnings

    import torch

    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "non-writable array": nothing writes to them
        for k, v in state.items():
            if isinstance(v, tuple):
                t = torch.from_numpy(v[1])
                v = t.view(torch.bfloat16) if v[0] == "bfloat16" else t
            out[k] = v
    return out
