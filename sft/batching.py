"""Rows -> token sequences -> packed (or one-conversation-per-row) micro-batches.

Packed rows put several conversations in one row with position ids restarting at each
conversation; with no attention mask, transformers then builds a block-diagonal causal mask
(sdpa/eager on CPU, varlen flash attention on GPU), so no token attends across conversations.
Mamba-2 layers have no such isolation in the PyTorch path, so hybrid models use "rows" mode:
the same bins, but each conversation in its own right-padded row.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from chat_template.reasoning import ReasoningAugmentConfig, augment_reasoning
from chat_template.render import MaskError, training_sequences
from sft.data import DataError, Row


@dataclass
class Sequence:
    input_ids: list[int]
    loss_mask: list[int]


def tokenize_rows(tokenizer, rows: list[Row], *, augment: ReasoningAugmentConfig | None = None,
                  seed: int = 0, skip_malformed: bool = False) -> tuple[list[Sequence], dict]:
    """Training sequences of every row (reasoning rows split per user turn), with counts."""
    rng = random.Random(seed)
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    seqs, stats = [], {"strip": 0, "truncate": 0, "skipped": 0}
    for row in rows:
        messages = row.messages
        if augment is not None:
            messages, action = augment_reasoning(messages, rng, augment, enc, tokenizer.decode)
            if action in stats:
                stats[action] += 1
        try:
            rendered = training_sequences(tokenizer, messages, row.tools)
        except MaskError as e:
            if not skip_malformed:
                raise DataError(f"{row.origin}: {e}") from None
            stats["skipped"] += 1
            continue
        seqs += [Sequence(r.input_ids, r.loss_mask) for r in rendered]
    return seqs, stats


def packed_row(seqs: list[Sequence], pack_size: int, pad_id: int) -> dict[str, torch.Tensor]:
    ids, mask, pos = [], [], []
    for s in seqs:
        ids += s.input_ids[:pack_size]
        mask += s.loss_mask[:pack_size]
        pos += list(range(min(len(s.input_ids), pack_size)))
    pad = pack_size - len(ids)
    ids += [pad_id] * pad
    mask += [0] * pad
    pos += list(range(pad))  # the padding is one more (untrained) "conversation"
    t = lambda x: torch.tensor([x], dtype=torch.long)  # noqa: E731
    return {"input_ids": t(ids), "loss_mask": t(mask), "position_ids": t(pos)}


def padded_rows(seqs: list[Sequence], pad_id: int, max_len: int) -> dict[str, torch.Tensor]:
    n = min(max(len(s.input_ids) for s in seqs), max_len)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    attn = torch.zeros((len(seqs), n), dtype=torch.long)
    for r, s in enumerate(seqs):
        k = min(len(s.input_ids), n)
        ids[r, :k] = torch.tensor(s.input_ids[:k])
        mask[r, :k] = torch.tensor(s.loss_mask[:k])
        attn[r, :k] = 1
    return {"input_ids": ids, "loss_mask": mask, "attention_mask": attn}


def make_batch(seqs: list[Sequence], mode: str, pack_size: int, pad_id: int) -> dict[str, torch.Tensor]:
    return packed_row(seqs, pack_size, pad_id) if mode == "packed" else padded_rows(seqs, pad_id, pack_size)


def model_inputs(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    """What the model's forward gets (never the loss mask); use_cache=False enables packed masks."""
    keys = ("input_ids", "position_ids", "attention_mask")
    return {k: batch[k].to(device) for k in keys if k in batch} | {"use_cache": False}
