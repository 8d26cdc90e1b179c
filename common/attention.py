"""Attention for packed rows without the T x T mask: one causal SDPA call per conversation.

A packed row (several conversations, position ids restarting at each) is isolated by transformers'
SDPA path with a block-diagonal [T, T] mask, so the kernel still computes attention over the whole
row: T^2 / 2 scores where the conversations need only sum(n_i^2) / 2 (at 1024-token packs of
~130-token conversations, ~8x fewer). Varlen flash attention does the same on GPUs that have it;
this is the portable equivalent, registered as the attention implementation "packed_sdpa":
rows whose position ids restart are split at the restarts, anything else (KV caches in generation,
a single conversation, sliding windows, biases) goes to transformers' own SDPA path unchanged. A
restart is taken as a conversation boundary of a causal packed row, and the mask transformers
builds for it is not read: do not combine restarting position ids with a padding mask.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "packed_sdpa"


def segments(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Per row, the (start, end) spans that start where the position id is 0 (plus a leading span)."""
    out = []
    for row in position_ids.tolist():
        starts = [0] + [i for i, p in enumerate(row) if p == 0 and i > 0]
        out.append(list(zip(starts, starts[1:] + [len(row)])))
    return out


def packed_sdpa_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                        position_ids: torch.Tensor | None = None, sliding_window=None, **kwargs):
    """query [B, H, T, D], key/value [B, Hkv, T, D] -> ([B, T, H, D], None), like transformers' SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    spans = None
    plain = kwargs.get("cache") is None and kwargs.get("position_bias") is None and kwargs.get("is_causal") is not False
    if plain and position_ids is not None and sliding_window is None and query.shape[2] == key.shape[2] > 1 \
            and position_ids.shape[-1] == query.shape[2]:
        spans = segments(position_ids.expand(query.shape[0], -1))
    if spans is None or all(len(s) == 1 for s in spans):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      sliding_window=sliding_window, **kwargs)
    gqa = query.shape[1] != key.shape[1]
    rows = [torch.cat([F.scaled_dot_product_attention(query[b:b + 1, :, s:e], key[b:b + 1, :, s:e],
                                                      value[b:b + 1, :, s:e], is_causal=True, scale=scaling,
                                                      dropout_p=dropout, enable_gqa=gqa)
                       for s, e in row_spans], dim=2)
            for b, row_spans in enumerate(spans)]
    return torch.cat(rows).transpose(1, 2).contiguous(), None


def register() -> str:
    """Make "packed_sdpa" a transformers attention implementation (idempotent); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, packed_sdpa_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


def use_packed_attention(model) -> bool:
    """Switch a model on SDPA to "packed_sdpa" (same weights, same results); False when it is not
    on SDPA (eager, flash attention...) or cannot switch."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    register()
    try:
        model.set_attn_implementation(NAME)
    except (ValueError, AttributeError):
        return False
    return True
