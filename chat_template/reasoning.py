"""Reasoning controls.

Training time (recipe: ~10% of SFT samples with reasoning stripped, ~3% truncated to a budget), so
the model learns to answer with reasoning off and after a cut-short chain of thought.

Inference time: a thinking budget. Once the reasoning reaches `budget` tokens, wait for the next
newline (at most `grace` more tokens), then force `\\n\\n</think>` and let the answer continue.
Two implementations of the same rule:
  - `ThinkingBudgetProcessor`, a logits processor for Hugging Face `generate`;
  - `generate_with_budget`, phased generation over any engine that continues from token ids
    (vLLM), so no engine-internal logits-processor API is needed.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

import torch

FORCE_TEXT = "\n\n</think>"


@dataclass
class ReasoningAugmentConfig:
    strip_fraction: float = 0.10
    truncate_fraction: float = 0.03
    truncate_budget_tokens: int = 64


def augment_reasoning(messages: list[dict], rng: random.Random, cfg: ReasoningAugmentConfig,
                      count_tokens: Callable[[str], list[int]], decode: Callable[[list[int]], str]
                      ) -> tuple[list[dict], str]:
    """Maybe strip or truncate the reasoning of a (normalised) conversation; returns (messages, action)."""
    if not any(m["role"] == "assistant" and m.get("reasoning_content") for m in messages):
        return messages, "none"
    r = rng.random()
    if r < cfg.strip_fraction:
        return [{**m, "reasoning_content": None} if m["role"] == "assistant" else m for m in messages], "strip"
    if r < cfg.strip_fraction + cfg.truncate_fraction:
        out = []
        for m in messages:
            if m["role"] == "assistant" and m.get("reasoning_content"):
                ids = count_tokens(m["reasoning_content"])
                if len(ids) > cfg.truncate_budget_tokens:
                    m = {**m, "reasoning_content": decode(ids[: cfg.truncate_budget_tokens]).rstrip()}
            out.append(m)
        return out, "truncate"
    return messages, "keep"


@dataclass
class BudgetTokens:
    """Token ids the budget rule needs, taken from a tokenizer once."""
    think_end: int
    force: list[int]
    newline: set[int]
    eos: int

    @classmethod
    def from_tokenizer(cls, tok) -> "BudgetTokens":
        newline = {i for i in range(len(tok)) if "\n" in tok.decode([i])}
        return cls(think_end=tok.convert_tokens_to_ids("</think>"),
                   force=tok(FORCE_TEXT, add_special_tokens=False)["input_ids"],
                   newline=newline, eos=tok.eos_token_id)


def _should_force(reasoning: list[int], budget: int, grace: int, ids: BudgetTokens) -> bool:
    n = len(reasoning)
    return n >= budget and (n >= budget + grace or bool(reasoning) and reasoning[-1] in ids.newline)


class ThinkingBudgetProcessor:
    """HF `generate` logits processor applying the thinking budget per sequence.

    Pass the prompt length (all prompts left-padded to it). Stateless across calls: the decision
    is recomputed from the generated tokens, so beams/samples never share state.
    """

    def __init__(self, prompt_len: int, budget: int, grace: int, ids: BudgetTokens):
        self.prompt_len, self.budget, self.grace, self.ids = prompt_len, budget, grace, ids

    def forced_token(self, generated: list[int]) -> int | None:
        if self.ids.think_end in generated or self.ids.eos in generated:
            return None
        force = self.ids.force
        # Already forcing: the tail is a proper prefix of the forced sequence.
        for k in range(len(force) - 1, 0, -1):
            if generated[-k:] == force[:k] and _should_force(generated[:-k], self.budget, self.grace, self.ids):
                return force[k]
        return force[0] if _should_force(generated, self.budget, self.grace, self.ids) else None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row in range(input_ids.shape[0]):
            tok = self.forced_token(input_ids[row, self.prompt_len:].tolist())
            if tok is not None:
                scores[row] = torch.full_like(scores[row], float("-inf"))
                scores[row, tok] = 0.0
        return scores


# generate(prompts, max_tokens, stop_token_ids) -> new token ids per prompt, stop token included.
GenerateFn = Callable[[list[list[int]], int, list[int]], list[list[int]]]


def generate_with_budget(generate: GenerateFn, prompts: list[list[int]], *, budget: int, grace: int,
                         max_new_tokens: int, ids: BudgetTokens) -> list[list[int]]:
    """Phased generation with the thinking budget, for engines without a logits-processor hook.

    1. reason for up to `budget` tokens (stops early at `</think>` or EOS);
    2. rows still reasoning: up to `grace` more tokens, stopping at a newline;
    3. rows still reasoning get `\\n\\n</think>` appended; every unfinished row continues to EOS
       or `max_new_tokens` in total.
    """
    outs = generate(prompts, budget, [ids.think_end, ids.eos])
    outs = [list(o) for o in outs]

    def reasoning(o):
        return ids.think_end not in o and ids.eos not in o

    need = [i for i, o in enumerate(outs) if reasoning(o) and len(o) >= budget and grace > 0
            and not (o and o[-1] in ids.newline)]
    if need:
        more = generate([prompts[i] + outs[i] for i in need], grace, sorted(ids.newline | {ids.think_end, ids.eos}))
        for i, m in zip(need, more):
            outs[i] += list(m)
    for o in outs:
        if reasoning(o) and len(o) < max_new_tokens:
            o += ids.force
    cont = [i for i, o in enumerate(outs) if ids.eos not in o and len(o) < max_new_tokens]
    if cont:
        rests = generate([prompts[i] + outs[i] for i in cont],
                         max(max_new_tokens - min(len(outs[i]) for i in cont), 1), [ids.eos])
        for i, r in zip(cont, rests):
            outs[i] += list(r)[: max_new_tokens - len(outs[i])]
    return [o[:max_new_tokens] for o in outs]
