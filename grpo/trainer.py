"""The GRPO policy trainer: log-probs of rollouts, one on-policy update per batch, weights for refit.

A plain class; the stage runs it as one Ray actor, or as several that shard it with FSDP2.
With `trainable=False` the same class serves as the frozen reference policy for the KL term.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from common.distributed import (Dist, WeightBroadcast, broadcast_full_weights, full_model_state, full_optimizer_state,
                                load_optimizer_state, weight_specs)
from common.losses import token_logprobs
from grpo.algorithm import PolicyLossConfig, importance_weights, logprob_mismatch, masked_mean, policy_loss_sum
from grpo.rollout import Sample


@dataclass
class OptimConfig:
    lr: float = 3e-6  # recipe: 3e-6 constant after 10 warmup steps
    warmup_steps: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    micro_batch_size: int = 32  # sequences per forward pass


@dataclass
class TrainBatch:
    input_ids: torch.Tensor  # [N, L] prompt + response, right-padded
    attention_mask: torch.Tensor  # [N, L]
    response_mask: torch.Tensor  # [N, L-1] float: 1 where position t predicts a trained response token
    rollout_logp: torch.Tensor  # [N, L-1] the rollout engine's log-probs at those positions
    generated_mask: torch.Tensor  # [N, L-1] float: every token the policy generated, trained or not
    advantages: torch.Tensor  # [N]


def build_batch(samples: list[Sample], advantages: list[float], trained: list[bool], pad_id: int) -> TrainBatch:
    """Right-padded tensors; `trained[i]=False` (truncated, zero-variance...) keeps sample i out of the
    loss, and tokens an environment fed back (Sample.mask 0) never enter it."""
    n, width = len(samples), max(len(s.prompt_ids) + len(s.response_ids) for s in samples)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    attn = torch.zeros((n, width), dtype=torch.long)
    mask = torch.zeros((n, width - 1))
    generated = torch.zeros((n, width - 1))
    rlp = torch.zeros((n, width - 1))
    for i, s in enumerate(samples):
        p, r = len(s.prompt_ids), len(s.response_ids)
        ids[i, : p + r] = torch.tensor(s.prompt_ids + s.response_ids)
        attn[i, : p + r] = 1
        if r:
            rlp[i, p - 1: p - 1 + r] = torch.tensor(s.logprobs, dtype=torch.float32)
            generated[i, p - 1: p - 1 + r] = torch.tensor(s.mask, dtype=torch.float32) if s.mask is not None else 1.0
            if trained[i]:
                mask[i, p - 1: p - 1 + r] = generated[i, p - 1: p - 1 + r]
    return TrainBatch(ids, attn, mask, rlp, generated, torch.tensor(advantages, dtype=torch.float32))


def _slices(n: int, size: int):
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class PolicyTrainer:
    """The policy (or, with `trainable=False`, the frozen reference) on one process, or as rank
    `rank` of `world_size` Ray actors that shard it with FSDP2 (see common.ray_utils.ActorGroup).

    Every rank receives the whole batch and works on its own rows; token counts for the loss
    normaliser come from the whole batch, so the update is the same for any world size.
    """

    def __init__(self, model_dir: str, optim: OptimConfig | None = None, loss: PolicyLossConfig | None = None, *,
                 device: str = "auto", dtype: str = "auto", trainable: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        from transformers import AutoModelForCausalLM

        from common.models import resolve_device, resolve_dtype

        torch.manual_seed(seed)
        self.dist = Dist(rank, world_size)
        self.device = resolve_device(device)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=resolve_dtype(dtype, self.device))
        self.model.to(self.device)
        self.optim_cfg, self.loss_cfg = optim or OptimConfig(), loss or PolicyLossConfig()
        self.trainable = trainable
        self.optimizer = self.scheduler = None
        self.sync: WeightBroadcast | None = None
        if world_size == 1:
            self._finish_setup()

    def join(self, master_addr: str, master_port: int) -> None:
        """Form the FSDP2 group with the other ranks, then shard (and build the optimizer over the shards)."""
        self.dist = Dist.join(self.dist.rank, self.dist.world, master_addr, master_port)
        self._finish_setup()

    def _finish_setup(self) -> None:
        self.model = self.dist.shard(self.model)
        if not self.trainable:
            self.model.requires_grad_(False)
            return
        o = self.optim_cfg
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=tuple(o.betas),
                                           weight_decay=o.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda i: min(1.0, (i + 1) / o.warmup_steps) if o.warmup_steps else 1.0)

    def _rows(self, n: int) -> tuple[torch.Tensor, int]:
        """This rank's rows of an n-row batch, padded with (untrained) row 0 to the same count on every
        rank, because FSDP2 forwards are collectives: all ranks must run the same micro-batches."""
        k = -(-n // self.dist.world)
        rows = list(range(min(self.dist.rank * k, n), min((self.dist.rank + 1) * k, n)))
        return torch.tensor(rows + [0] * (k - len(rows)), dtype=torch.long), len(rows)

    def _logp(self, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        ids = ids.to(self.device)
        out = self.model(input_ids=ids, attention_mask=attn.to(self.device), use_cache=False)
        return token_logprobs(out.logits, ids)

    @torch.no_grad()
    def logprobs(self, batch: TrainBatch) -> torch.Tensor:
        """Log-probs of this rank's rows (all rows on one process); ranks' results concatenate in order."""
        self.model.eval()
        rows, real = self._rows(len(batch.input_ids))
        ids, attn = batch.input_ids[rows], batch.attention_mask[rows]
        out = [self._logp(ids[sl], attn[sl]).cpu() for sl in _slices(len(rows), self.optim_cfg.micro_batch_size)]
        return torch.cat(out)[:real]

    def update(self, batch: TrainBatch, old_logp: torch.Tensor, ref_logp: torch.Tensor | None = None) -> dict:
        """One optimizer step over the whole batch; loss normalised by its trained-token count."""
        cfg, world = self.loss_cfg, self.dist.world
        weights, keep = importance_weights(old_logp, batch.rollout_logp, batch.generated_mask,
                                           cap=cfg.is_cap, max_seq_error=cfg.max_seq_logprob_error)
        mask = batch.response_mask * keep[:, None]
        n_tokens = float(mask.sum())
        rows, real = self._rows(len(batch.input_ids))
        mask = mask[rows]
        mask[real:] = 0
        self.model.train()
        totals = torch.zeros(3)  # clipped tokens, KL sum, loss sum
        for sl in _slices(len(rows), self.optim_cfg.micro_batch_size) if n_tokens else []:
            r, m = rows[sl], mask[sl].to(self.device)
            if not m.any() and not self.dist.active:  # under FSDP2 every rank must run every micro-batch
                continue
            logp = self._logp(batch.input_ids[r], batch.attention_mask[r])
            loss, st = policy_loss_sum(logp, old_logp[r].to(self.device), batch.advantages[r].to(self.device), m, cfg,
                                       is_weights=weights[r].to(self.device),
                                       ref_logp=None if ref_logp is None else ref_logp[r].to(self.device))
            (loss * world / max(n_tokens, 1.0)).backward()  # x world: FSDP2 averages gradients over ranks
            totals += torch.tensor([st["clip_count"], st["kl_sum"], float(loss.detach())])
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.optim_cfg.grad_clip)
        lr = self.scheduler.get_last_lr()[0]  # the rate of this update
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        clip_count, kl_sum, loss_sum = self.dist.reduce_sum(totals).tolist()
        denom = max(n_tokens, 1.0)
        return {"loss": loss_sum / denom, "grad_norm": float(grad_norm), "lr": lr,
                "clip_fraction": clip_count / denom, "kl": kl_sum / denom,
                "trained_tokens": n_tokens, "is_weight_mean": float(masked_mean(weights, batch.generated_mask)),
                "mismatch_masked_fraction": float(1 - keep.mean()),
                **logprob_mismatch(old_logp, batch.rollout_logp, batch.generated_mask)}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full weights on the CPU (under FSDP2 a collective: rank 0 gets them, other ranks {})."""
        if self.dist.active:
            return full_model_state(self.model)
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def open_weight_sync(self, master_addr: str, master_port: int, world: int) -> list:
        """Rank 0 becomes the sender of a weight-broadcast group with the rollout engines; returns the specs."""
        if self.dist.is_main:
            self.sync = WeightBroadcast(master_addr, master_port, 0, world, self.device)
        return weight_specs(self.model)

    def broadcast_weights(self) -> None:
        """Refit by collective: every rank calls this (FSDP2 gathers), rank 0 sends to the engines."""
        broadcast_full_weights(self.model, self.sync)

    def training_state(self) -> tuple[dict, dict]:
        """(optimizer state keyed by parameter name, scheduler state) for a checkpoint (collective under FSDP2)."""
        return full_optimizer_state(self.model, self.optimizer), self.scheduler.state_dict()

    def load_training_state(self, optimizer_state: dict, scheduler_state: dict) -> None:
        load_optimizer_state(self.model, self.optimizer, optimizer_state)
        self.scheduler.load_state_dict(scheduler_state)
