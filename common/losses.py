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


def masked_nll_sum(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-token NLL over target tokens, number of target tokens).

    `loss_mask[:, t] == 1` marks token t as a target (predicted from position t-1). Returning the
    sum lets the caller divide by the token count of the whole global batch, which is what makes
    gradient accumulation and data parallelism exact.
    """
    mask = loss_mask[:, 1:].to(torch.float32)
    nll = -token_logprobs(logits, input_ids)
    return (nll * mask).sum(), mask.sum()
