"""The GRPO policy trainer: log-probs of rollouts, one on-policy update per batch, weights for refit.

A plain class; the stage runs it as a Ray actor (one process owning the weights and optimizer).
With `trainable=False` the same class serves as the frozen reference policy for the KL term.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

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
    generated_mask: torch.Tensor  # [N, L-1] float: every response token, trained or not (health metrics)
    advantages: torch.Tensor  # [N]


def build_batch(samples: list[Sample], advantages: list[float], trained: list[bool], pad_id: int) -> TrainBatch:
    """Right-padded tensors; `trained[i]=False` (truncated, zero-variance...) keeps sample i out of the loss."""
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
            generated[i, p - 1: p - 1 + r] = 1.0
            if trained[i]:
                mask[i, p - 1: p - 1 + r] = 1.0
    return TrainBatch(ids, attn, mask, rlp, generated, torch.tensor(advantages, dtype=torch.float32))


def _slices(n: int, size: int):
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class PolicyTrainer:
    def __init__(self, model_dir: str, optim: OptimConfig | None = None, loss: PolicyLossConfig | None = None, *,
                 device: str = "auto", dtype: str = "auto", trainable: bool = True, seed: int = 0):
        from transformers import AutoModelForCausalLM

        from common.models import resolve_device, resolve_dtype

        torch.manual_seed(seed)
        self.device = resolve_device(device)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=resolve_dtype(dtype, self.device))
        self.model.to(self.device)
        self.optim_cfg, self.loss_cfg = optim or OptimConfig(), loss or PolicyLossConfig()
        self.optimizer = self.scheduler = None
        if trainable:
            o = self.optim_cfg
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=tuple(o.betas),
                                               weight_decay=o.weight_decay)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, lambda i: min(1.0, (i + 1) / o.warmup_steps) if o.warmup_steps else 1.0)
        else:
            self.model.requires_grad_(False)

    def _logp(self, batch: TrainBatch, sl: slice) -> torch.Tensor:
        ids = batch.input_ids[sl].to(self.device)
        out = self.model(input_ids=ids, attention_mask=batch.attention_mask[sl].to(self.device), use_cache=False)
        return token_logprobs(out.logits, ids)

    @torch.no_grad()
    def logprobs(self, batch: TrainBatch) -> torch.Tensor:
        self.model.eval()
        return torch.cat([self._logp(batch, sl).cpu() for sl in _slices(len(batch.input_ids), self.optim_cfg.micro_batch_size)])

    def update(self, batch: TrainBatch, old_logp: torch.Tensor, ref_logp: torch.Tensor | None = None) -> dict:
        """One optimizer step over the whole batch; loss normalised by its trained-token count."""
        cfg = self.loss_cfg
        weights, keep = importance_weights(old_logp, batch.rollout_logp, batch.generated_mask,
                                           cap=cfg.is_cap, max_seq_error=cfg.max_seq_logprob_error)
        mask = batch.response_mask * keep[:, None]
        n_tokens = float(mask.sum())
        self.model.train()
        totals = {"clip_count": 0.0, "kl_sum": 0.0, "loss_sum": 0.0}
        for sl in _slices(len(batch.input_ids), self.optim_cfg.micro_batch_size):
            m = mask[sl].to(self.device)
            if not m.any():
                continue
            logp = self._logp(batch, sl)
            loss, st = policy_loss_sum(logp, old_logp[sl].to(self.device), batch.advantages[sl].to(self.device), m, cfg,
                                       is_weights=weights[sl].to(self.device),
                                       ref_logp=None if ref_logp is None else ref_logp[sl].to(self.device))
            (loss / max(n_tokens, 1.0)).backward()
            totals["clip_count"] += st["clip_count"]
            totals["kl_sum"] += st["kl_sum"]
            totals["loss_sum"] += float(loss.detach())
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.optim_cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        denom = max(n_tokens, 1.0)
        return {"loss": totals["loss_sum"] / denom, "grad_norm": float(grad_norm), "lr": self.scheduler.get_last_lr()[0],
                "clip_fraction": totals["clip_count"] / denom, "kl": totals["kl_sum"] / denom,
                "trained_tokens": n_tokens, "is_weight_mean": float(masked_mean(weights, batch.generated_mask)),
                "mismatch_masked_fraction": float(1 - keep.mean()),
                **logprob_mismatch(old_logp, batch.rollout_logp, batch.generated_mask)}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def training_state(self) -> tuple[dict, dict]:
        """(optimizer state keyed by parameter name, scheduler state) for a checkpoint."""
        from common.distributed import full_optimizer_state

        return full_optimizer_state(self.model, self.optimizer), self.scheduler.state_dict()

    def load_training_state(self, optimizer_state: dict, scheduler_state: dict) -> None:
        from common.distributed import load_optimizer_state

        load_optimizer_state(self.model, self.optimizer, optimizer_state)
        self.scheduler.load_state_dict(scheduler_state)
