"""SFT training pieces: settings, LR schedules, one optimizer step, validation loss."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from chat_template.reasoning import ReasoningAugmentConfig
from common.attention import use_packed_attention
from common.losses import masked_nll_sum, target_positions
from common.models import takes_logits_to_keep
from sft.batching import model_inputs
from sft.data import SFTDataConfig


@dataclass
class SFTConfig:
    max_steps: int = 100
    lr: float = 1e-5  # public recipe (paper: 5e-5)
    min_lr_ratio: float = 0.1
    schedule: str = "cosine"  # cosine | wsd | constant (all after linear warmup)
    warmup_steps: int = 10
    wsd_decay_fraction: float = 0.2  # WSD: share of steps spent decaying at the end
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0
    pack_size: int = 4096
    packs_per_step: int = 4  # global batch, in packs (bins of pack_size tokens)
    micro_batch_packs: int = 1  # packs per forward pass; the rest is gradient accumulation
    # ffd (first-fit decreasing) | ffs (first-fit shuffle) | by_length (rows of similar length, so
    # that rows x longest <= pack_size: little padding with one conversation per row)
    packing: str = "ffd"
    truncate_long: bool = False  # cut sequences longer than pack_size instead of dropping them
    # packed: conversations share a row (attention-only models); rows: one conversation per row.
    # auto: rows for models with Mamba layers (no sequence-aware scan on this path), else packed.
    attention_isolation: str = "auto"
    val_every: int = 25
    augment: ReasoningAugmentConfig = field(default_factory=ReasoningAugmentConfig)
    data: SFTDataConfig = field(default_factory=SFTDataConfig)


def lr_multiplier(step: int, cfg: SFTConfig) -> float:
    """LR factor at optimizer step `step` (0-based): linear warmup, then cosine, WSD or constant."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    total = max(cfg.max_steps - cfg.warmup_steps, 1)
    t = min((step - cfg.warmup_steps) / total, 1.0)
    lo = cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * t))
    if cfg.schedule == "wsd":
        decay_start = 1 - cfg.wsd_decay_fraction
        return 1.0 if t <= decay_start else 1 - (1 - lo) * (t - decay_start) / max(cfg.wsd_decay_fraction, 1e-9)
    if cfg.schedule == "constant":
        return 1.0
    raise ValueError(f"sft.schedule: unknown schedule {cfg.schedule!r} (cosine, wsd, constant)")


def uses_mamba(model) -> bool:
    cfg = getattr(model, "config", None)
    return bool(getattr(cfg, "layers_block_type", None) and "linear_attention" in cfg.layers_block_type) \
        or getattr(cfg, "model_type", "") in ("mamba", "mamba2", "falcon_h1", "nemotron_h", "jamba", "bamba")


def isolation_mode(setting: str, model) -> str:
    if setting == "auto":
        return "rows" if uses_mamba(model) else "packed"
    if setting not in ("packed", "rows"):
        raise ValueError(f"sft.attention_isolation: {setting!r} (auto, packed, rows)")
    if setting == "packed" and uses_mamba(model):
        raise ValueError("sft.attention_isolation=packed would leak Mamba state across conversations "
                         "on this model; use rows (or auto)")
    return setting


def choose_attention(model, mode: str, device) -> str:
    """Packed rows on CPU attend one conversation at a time (common/attention.py) instead of through
    a block-diagonal T x T mask; elsewhere the model's own implementation stays (on GPU, flash
    attention's varlen path when installed). Returns the implementation in use."""
    if mode == "packed" and torch.device(device).type == "cpu":
        use_packed_attention(model)
    return getattr(model.config, "_attn_implementation", "?")


def nll_sum(model, mb: dict, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(NLL sum, target count) of one micro-batch; logits only at target positions where the model
    allows it (transformers' `logits_to_keep`), which is exact and saves the LM head on prompts."""
    ids, mask = mb["input_ids"].to(device), mb["loss_mask"].to(device)
    keep = target_positions(mask) if takes_logits_to_keep(model) else None
    extra = {} if keep is None else {"logits_to_keep": keep}
    out = model(**model_inputs(mb, device), **extra)
    return masked_nll_sum(out.logits, ids, mask, keep)


def train_step(model, micro_batches: list[dict], optimizer, scheduler, *, grad_clip: float,
               device, reduce_sum=None) -> dict:
    """One optimizer step over micro-batches; loss normalised by the global batch's target tokens.

    `reduce_sum(tensor)` sums a count over data-parallel ranks (None: single process). Every
    micro-batch's loss is (its NLL sum) / (all target tokens of the step), times the world size
    because data-parallel gradient averaging divides by it again.
    """
    n_local = sum(int(mb["loss_mask"][:, 1:].sum()) for mb in micro_batches)
    n_global = torch.tensor(float(n_local))
    world = 1
    if reduce_sum is not None:
        n_global, world = reduce_sum(n_global), torch.distributed.get_world_size()
    n_global = max(float(n_global), 1.0)
    total = 0.0
    for mb in micro_batches:
        s, _ = nll_sum(model, mb, device)
        (s * world / n_global).backward()
        total += float(s.detach())
    grad_norm = torch.nn.utils.clip_grad_norm_(
        [p for p in model.parameters() if p.requires_grad], grad_clip if grad_clip > 0 else float("inf"))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    loss = (total if reduce_sum is None else float(reduce_sum(torch.tensor(total)))) / n_global
    return {"loss": loss, "grad_norm": float(grad_norm), "target_tokens": n_global}


@torch.no_grad()
def validation_loss(model, batches: list[dict], device) -> float:
    was_training = model.training
    model.eval()
    s_tot, n_tot = 0.0, 0.0
    for mb in batches:
        s, n = nll_sum(model, mb, device)
        s_tot, n_tot = s_tot + float(s), n_tot + float(n)
    model.train(was_training)
    return s_tot / max(n_tot, 1.0)
