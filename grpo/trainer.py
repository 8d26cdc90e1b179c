"""The GRPO policy trainer: log-probs of rollouts, one on-policy update per batch, weights for refit.

A plain class; the stage runs it as one Ray actor, or as several that shard it with FSDP2.
With `trainable=False` the same class serves as the frozen reference policy for the KL term.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from common import ray_utils
from common.distributed import (Dist, WeightBroadcast, broadcast_full_weights, full_model_state, full_optimizer_state,
                                load_optimizer_state, weight_specs)
from common.losses import token_logprobs
from common.models import adamw, takes_logits_to_keep
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


def response_start(generated_mask: torch.Tensor) -> int:
    """The first position (of any row) that predicts a generated token; 0 when there is none."""
    nz = generated_mask.any(0).nonzero()
    return int(nz[0]) if len(nz) else 0


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
        self.keeps_logits = takes_logits_to_keep(self.model)
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
        self.optimizer = adamw(self.model, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda i: min(1.0, (i + 1) / o.warmup_steps) if o.warmup_steps else 1.0)

    def _rows(self, n: int) -> tuple[torch.Tensor, int]:
        """This rank's rows of an n-row batch, padded with (untrained) row 0 to the same count on every
        rank, because FSDP2 forwards are collectives: all ranks must run the same micro-batches."""
        k = -(-n // self.dist.world)
        rows = list(range(min(self.dist.rank * k, n), min((self.dist.rank + 1) * k, n)))
        return torch.tensor(rows + [0] * (k - len(rows)), dtype=torch.long), len(rows)

    def _logp(self, ids: torch.Tensor, attn: torch.Tensor, start: int = 0) -> torch.Tensor:
        """[N, L-1] log-probs of ids[:, 1:]; with `start`, the LM head runs only from position `start`
        on (the prompts' logits are never used) and earlier positions read 0."""
        ids = ids.to(self.device)
        keep = {"logits_to_keep": ids.shape[1] - start} if start > 0 and self.keeps_logits else {}
        out = self.model(input_ids=ids, attention_mask=attn.to(self.device), use_cache=False, **keep)
        if not keep:
            return token_logprobs(out.logits, ids)
        return F.pad(token_logprobs(out.logits, ids[:, start:]), (start, 0))

    @torch.no_grad()
    def logprobs(self, batch: TrainBatch) -> torch.Tensor:
        """Log-probs of this rank's rows (all rows on one process); ranks' results concatenate in order."""
        self.model.eval()
        rows, real = self._rows(len(batch.input_ids))
        ids, attn = batch.input_ids[rows], batch.attention_mask[rows]
        start = response_start(batch.generated_mask)
        out = [self._logp(ids[sl], attn[sl], start).cpu() for sl in _slices(len(rows), self.optim_cfg.micro_batch_size)]
        return torch.cat(out)[:real]

    def update(self, batch: TrainBatch, old_logp: torch.Tensor | None = None,
               ref_logp: torch.Tensor | None = None) -> dict:
        """One optimizer step over the whole batch; loss normalised by its trained-token count.

        `old_logp` None (what the RL loop passes): this forward's own log-probs, detached, are the
        old policy's. That is exact, since the weights change only at the single optimizer step at
        the end, and it saves the separate forward pass over the batch. The trained-token count (it
        depends on the importance-sampling mask) is then known only after the last micro-batch, so
        gradients are rescaled to it before clipping. Mismatch metrics cover the rows the update ran
        (those with a trained token), on every rank.
        """
        cfg, world = self.loss_cfg, self.dist.world
        # Rows without a trained token (zero-variance groups, truncated...) add nothing to the loss: skip them.
        live = batch.response_mask.any(-1).nonzero().flatten()
        rows, real = self._rows(len(live))
        rows = live[rows]
        start = response_start(batch.generated_mask)
        # Gradients are of loss sums / every response token of the batch (known up front, the same on
        # every rank), rescaled below to / the tokens left after the importance-sampling mask: the
        # backward passes see the usual scale (no float16 overflow), the result is exactly normalised.
        provisional = max(float(batch.response_mask.sum()), 1.0)
        self.model.train()
        totals = torch.zeros(4)  # trained tokens, clipped tokens, KL sum, loss sum
        seen: list[tuple[torch.Tensor, ...]] = []  # per micro-batch: old, rollout, generated, keep, weights
        for sl in _slices(len(rows), self.optim_cfg.micro_batch_size):
            r = rows[sl]
            n_real = max(0, min(len(r), real - sl.start))  # rows past `real` only pad this rank's share
            w = int(batch.attention_mask[r].sum(-1).max())  # right-padded: columns past w are padding only
            m = batch.response_mask[r, : w - 1].clone()
            m[n_real:] = 0
            m = m.to(self.device)
            logp = self._logp(batch.input_ids[r, :w], batch.attention_mask[r, :w], start)
            old = logp.detach() if old_logp is None else old_logp[r, : w - 1].to(self.device)
            gen = batch.generated_mask[r, : w - 1].to(self.device)
            weights, keep = importance_weights(old, batch.rollout_logp[r, : w - 1].to(self.device), gen,
                                               cap=cfg.is_cap, max_seq_error=cfg.max_seq_logprob_error)
            m = m * keep[:, None]
            loss, st = policy_loss_sum(logp, old, batch.advantages[r].to(self.device), m, cfg, is_weights=weights,
                                       ref_logp=None if ref_logp is None else ref_logp[r, : w - 1].to(self.device))
            (loss * world / provisional).backward()  # x world: FSDP2 averages gradients over ranks
            totals += torch.tensor([float(m.sum()), st["clip_count"], st["kl_sum"], float(loss.detach())])
            seen.append((old[:n_real].flatten().cpu(), batch.rollout_logp[r[:n_real], : w - 1].flatten(),
                         gen[:n_real].flatten().cpu(), keep[:n_real].cpu(), weights[:n_real].flatten().cpu()))
        n_tokens, clip_count, kl_sum, loss_sum = self.dist.reduce_sum(totals).tolist()
        denom = max(n_tokens, 1.0)
        params = [p for p in self.model.parameters() if p.grad is not None]
        for p in params:
            p.grad.mul_(provisional / denom)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.optim_cfg.grad_clip) if params else torch.zeros(())
        lr = self.scheduler.get_last_lr()[0]  # the rate of this update
        if n_tokens:  # nothing trained (all masked): no step, or Adam's momentum would still move the weights
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss_sum / denom, "grad_norm": float(grad_norm), "lr": lr,
                "clip_fraction": clip_count / denom, "kl": kl_sum / denom, "trained_tokens": n_tokens,
                **self._mismatch_metrics(seen)}

    def _mismatch_metrics(self, seen: list[tuple[torch.Tensor, ...]]) -> dict:
        """Trainer-vs-rollout metrics over every rank's rows (token- or row-weighted means, summed over ranks)."""
        if seen:
            old, rollout, gen, keep, weights = (torch.cat(x) for x in zip(*seen))
        else:
            old = rollout = gen = weights = keep = torch.zeros(0)
        local = {**logprob_mismatch(old, rollout, gen), "is_weight_mean": float(masked_mean(weights, gen))}
        n_tok, n_rows = float(gen.sum()), float(keep.numel())
        sums = self.dist.reduce_sum(torch.tensor([n_tok, n_rows, float((1 - keep).sum())] +
                                                 [local[k] * n_tok for k in sorted(local)], dtype=torch.float64))
        n_tok, n_rows, masked, *rest = sums.tolist()
        return {"mismatch_masked_fraction": masked / max(n_rows, 1.0),
                **{k: v / max(n_tok, 1.0) for k, v in zip(sorted(local), rest)}}

    def state_dict(self, copy: bool = True) -> dict[str, torch.Tensor]:
        """Full weights on the CPU (under FSDP2 a collective: rank 0 gets them, other ranks {})."""
        if self.dist.active:
            return full_model_state(self.model)
        return {k: v.detach().to("cpu", copy=copy) for k, v in self.model.state_dict().items()}

    def refit_weights(self) -> dict:
        """`state_dict` for the object-store refit: live tensors (Ray copies the return value into
        its store, the one copy needed) as numpy, which Ray passes on without another copy."""
        return ray_utils.to_wire(self.state_dict(copy=False))

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
