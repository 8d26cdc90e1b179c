"""Token-level loss helpers shared by SFT, GRPO and GenRM (pure tensor functions)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(input_ids[:, t] | input_ids[:, :t]) for t >= 1: shape [B, T-1].

    Computed in float32 (bf16 log-softmax loses the precision the RL ratio needs).
    """
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def target_positions(loss_mask: torch.Tensor) -> torch.Tensor:
    """Positions t (0-based, any row) whose next token t+1 is a target: the only logits a loss needs.

    Passed to a model as `logits_to_keep`, it skips the LM head (often the largest matmul of an SFT
    step, and the largest activation) on prompt, system and padding tokens.
    """
    return loss_mask[:, 1:].any(0).nonzero().squeeze(-1)


def masked_nll_sum(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor,
                   keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-token NLL over target tokens, number of target tokens).

    `loss_mask[:, t] == 1` marks token t as a target (predicted from position t-1). Returning the
    sum lets the caller divide by the token count of the whole global batch, which is what makes
    gradient accumulation and data parallelism exact. With `keep` (from `target_positions`), the
    logits are those of positions `keep` only, [B, len(keep), V].
    """
    if keep is None:
        mask = loss_mask[:, 1:].to(torch.float32)
        nll = -token_logprobs(logits, input_ids)
    else:
        mask = loss_mask[:, keep + 1].to(torch.float32)
        targets = input_ids[:, keep + 1]
        nll = -F.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (nll * mask).sum(), mask.sum()
