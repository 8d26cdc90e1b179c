"""Data-parallel training plumbing shared by the stages: process group, FSDP2 sharding, reductions,
and world-size-independent state dicts for checkpoints.

Launched by `torchrun --nproc_per_node=N` (env RANK/WORLD_SIZE/LOCAL_RANK) or as N Ray actors that
set the same variables. With one process every call is a cheap no-op, so stages have one code path.
Backend: NCCL on CUDA, gloo on CPU (which is how the 2-process test runs).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_optimizer_state_dict)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Dist":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        d = cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
        if world > 1 and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if torch.cuda.is_available():
                torch.cuda.set_device(d.local_rank)
            dist.init_process_group(backend)
        return d

    @classmethod
    def join(cls, rank: int, world: int, master_addr: str, master_port: int) -> "Dist":
        """Join a group whose members are not launched by torchrun (e.g. N Ray actors)."""
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=os.environ.get("LOCAL_RANK", "0"),
                          MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
        return cls.from_env()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def device(self, requested: torch.device) -> torch.device:
        return torch.device("cuda", self.local_rank) if requested.type == "cuda" else requested

    def shard(self, model):
        """FSDP2 (`fully_shard`) per transformer block, then the root; identity with one process."""
        if not self.active:
            return model
        from torch.distributed.fsdp import fully_shard

        block_names = set(getattr(model, "_no_split_modules", None) or [])
        blocks = [m for m in model.modules() if type(m).__name__ in block_names]
        if not blocks:
            raise ValueError(f"{type(model).__name__}: no `_no_split_modules` blocks to shard with FSDP2")
        for block in blocks:
            fully_shard(block)
        fully_shard(model)
        return model

    def reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, returned on t's device (NCCL reduces only GPU tensors: CPU ones go via it)."""
        if not self.active:
            return t
        on_gpu = dist.get_backend() == "nccl" and t.device.type == "cpu"
        r = t.to("cuda") if on_gpu else t.clone()
        dist.all_reduce(r, op=dist.ReduceOp.SUM)
        return r.cpu() if on_gpu else r

    def broadcast(self, obj):
        """rank 0's value of a picklable object, on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def shutdown(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


class WeightBroadcast:
    """A process group of its own (beside any FSDP default group) from the trainer's rank 0 (rank 0
    here) to the rollout engines (ranks 1..n), used only to broadcast weights after each update:
    NCCL from GPU to GPU, gloo on CPU. The tensors never pass through Ray's object store.
    """

    def __init__(self, master_addr: str, master_port: int, rank: int, world: int, device: torch.device):
        from datetime import timedelta

        store = dist.TCPStore(master_addr, master_port, world, is_master=rank == 0, timeout=timedelta(minutes=10))
        group = dist.ProcessGroupNCCL if device.type == "cuda" else dist.ProcessGroupGloo
        self.pg, self.device = group(store, rank, world), device

    def send(self, tensor: torch.Tensor) -> None:
        self.pg.broadcast(tensor.to(self.device).contiguous(), 0).wait()

    def receive(self, specs: list[tuple[str, list[int], str]]) -> dict[str, torch.Tensor]:
        """The tensors rank 0 sends, one per (name, shape, dtype) spec, in the spec order."""
        out = {}
        for name, shape, dtype in specs:
            t = torch.empty(shape, dtype=getattr(torch, dtype), device=self.device)
            self.pg.broadcast(t, 0).wait()
            out[name] = t
        return out


def weight_specs(model) -> list[tuple[str, list[int], str]]:
    """(name, full shape, dtype) of every state-dict tensor, sharded or not: what receivers allocate."""
    return [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]


def broadcast_full_weights(model, sender: WeightBroadcast | None) -> None:
    """Send every full tensor, in state-dict order. Under FSDP2 every rank must call this (each
    sharded tensor is gathered collectively); only the rank holding `sender` sends."""
    from torch.distributed.tensor import DTensor

    for t in model.state_dict().values():
        full = t.full_tensor() if isinstance(t, DTensor) else t
        if sender is not None:
            sender.send(full.detach())


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model) -> dict:
    """Unsharded weights (on rank 0; empty elsewhere when sharded). Collective under FSDP."""
    return get_model_state_dict(model, options=_FULL)


def full_optimizer_state(model, optimizer) -> dict:
    """Optimizer state keyed by parameter names, unsharded: resumable under any world size."""
    return get_optimizer_state_dict(model, optimizer, options=_FULL)


def load_optimizer_state(model, optimizer, state: dict) -> None:
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True))
