"""The Nemotron 3 Nano chat format: template, renderer with loss masks, parser, reasoning controls."""
from __future__ import annotations

from pathlib import Path

TEMPLATE_PATH = Path(__file__).resolve().parent / "template.jinja"
CONTROL_TOKENS = ["<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
STRUCTURE_TOKENS = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]


def attach_template(tokenizer) -> int:
    """Give any tokenizer the recipe's chat format; returns how many tokens had to be added.

    Turn markers become special tokens and the reasoning/tool tags single (non-special) tokens,
    so a real checkpoint (e.g. SmolLM2, Qwen) renders exactly like the embedded default. The
    caller resizes the model's embeddings when tokens were added.
    """
    from tokenizers import AddedToken

    vocab = tokenizer.get_vocab()
    missing_turn = [t for t in ("<|im_start|>", "<|im_end|>") if t not in vocab]
    added = tokenizer.add_special_tokens({"additional_special_tokens": [
        AddedToken(t, special=True, normalized=False) for t in missing_turn]}) if missing_turn else 0
    added += tokenizer.add_tokens([AddedToken(t, special=False, normalized=False)
                                   for t in STRUCTURE_TOKENS if t not in vocab])
    tokenizer.chat_template = TEMPLATE_PATH.read_text()
    tokenizer.eos_token = "<|im_end|>"  # generation ends with the assistant turn
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        tokenizer.pad_token = "<pad>" if "<pad>" in tokenizer.get_vocab() else tokenizer.pad_token or "<|im_end|>"
    return added
