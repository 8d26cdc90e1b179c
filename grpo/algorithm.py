"""GRPO as pure tensor functions: advantages, the clipped token-level policy loss, KL estimators,
the trainer-vs-rollout importance-sampling correction, and the health metrics.

Shapes: rewards [n_groups, G]; per-token tensors [N, T] with a 0/1 `mask` of trained tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def group_advantages(rewards: torch.Tensor, mode: str = "loo", eps: float = 1e-6) -> torch.Tensor:
    """Per-response advantages within each group (row) of G responses to one prompt.

    loo  (recipe): r_i - mean of the other G-1 rewards, divided by the group std.
    grpo:          (r_i - group mean) / group std.
    A group whose rewards are all equal (std 0) gets advantage 0: no division, no signal.
    """
    g = rewards.shape[-1]
    std = rewards.std(dim=-1, keepdim=True, unbiased=False)
    if mode == "loo":
        if g < 2:
            return torch.zeros_like(rewards)
        baseline = (rewards.sum(dim=-1, keepdim=True) - rewards) / (g - 1)
    elif mode == "grpo":
        baseline = rewards.mean(dim=-1, keepdim=True)
    else:
        raise ValueError(f"advantage mode must be 'loo' or 'grpo', got {mode!r}")
    centred = rewards - baseline
    return torch.where(std > eps, centred / std.clamp_min(eps), torch.zeros_like(rewards))


def zero_variance_groups(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """[n_groups] bool: groups whose responses all got the same reward."""
    return rewards.std(dim=-1, unbiased=False) <= eps


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi.

    k1: logp - ref_logp (unbiased, high variance, can be negative).
    k3: exp(ref - logp) - (ref - logp) - 1 (unbiased, always >= 0; the recipe's choice).
    """
    d = ref_logp - logp
    if kind == "k1":
        return -d
    if kind == "k3":
        return torch.exp(d) - d - 1
    raise ValueError(f"kl estimator must be 'k1' or 'k3', got {kind!r}")


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp_min(1)


def importance_weights(old_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor, *,
                       cap: float = 2.0, max_seq_error: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Correction for the trainer and the rollout engine disagreeing on log-probs.

    Returns (per-token weights exp(old - rollout) truncated at `cap`, per-sequence keep mask):
    a sequence whose mean |old - rollout| exceeds `max_seq_error` is masked out entirely.
    """
    diff = (old_logp - rollout_logp) * mask
    weights = torch.exp(diff).clamp(max=cap).detach()
    seq_err = diff.abs().sum(-1) / mask.sum(-1).clamp_min(1)
    keep = (seq_err <= max_seq_error).to(mask.dtype)
    return weights, keep


@dataclass
class PolicyLossConfig:
    clip_low: float = 0.2
    clip_high: float = 0.28
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    is_cap: float = 2.0  # truncated importance-sampling weight
    max_seq_logprob_error: float = 0.5  # sequences beyond this mean |trainer - rollout| are masked


def policy_loss_sum(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, cfg: PolicyLossConfig, *, is_weights: torch.Tensor | None = None,
                    ref_logp: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Sum over trained tokens of the clipped policy-gradient loss (+ KL); caller divides by the
    global token count (token-level normalisation across the whole batch).

    advantages: [N] per sequence (broadcast over its tokens) or [N, T].
    """
    adv = advantages[:, None] if advantages.dim() == 1 else advantages
    ratio = torch.exp(logp - old_logp.detach())
    clipped = ratio.clamp(1 - cfg.clip_low, 1 + cfg.clip_high)
    per_tok = -torch.minimum(ratio * adv, clipped * adv)
    if is_weights is not None:
        per_tok = per_tok * is_weights
    kl = torch.zeros_like(per_tok)
    if ref_logp is not None and cfg.kl_coef > 0:
        kl = kl_penalty(logp, ref_logp.detach(), cfg.kl_estimator)
        per_tok = per_tok + cfg.kl_coef * kl
    with torch.no_grad():
        was_clipped = ((ratio < 1 - cfg.clip_low) & (adv < 0)) | ((ratio > 1 + cfg.clip_high) & (adv > 0))
        stats = {"clip_count": float((was_clipped.float() * mask).sum()),
                 "kl_sum": float((kl * mask).sum()), "tokens": float(mask.sum())}
    return (per_tok * mask).sum(), stats


def logprob_mismatch(trainer_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor) -> dict:
    """Trainer-vs-rollout health metrics (the recipe checks gen_kl_error < 0.02, mult error ~1).

    gen_kl_error: mean over rollout tokens of the k3 estimate of KL(rollout || trainer).
    token_mult_prob_error: mean over tokens of exp(|trainer - rollout|) (1.0 = perfect agreement).
    """
    d = trainer_logp - rollout_logp
    k3 = (torch.exp(d) - d - 1).clamp_min(0)  # >= 0 exactly; float rounding can dip below
    return {"gen_kl_error": float(masked_mean(k3, mask)),
            "token_mult_prob_error": float(masked_mean(torch.exp(d.abs()), mask)),
            "logprob_abs_error": float(masked_mean(d.abs(), mask))}
