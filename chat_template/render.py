"""Conversation -> token ids + per-token loss mask, derived from the Jinja template itself.

The template is the single source of truth for the format. Each message's text is the difference
between renderings of consecutive prefixes of the conversation, so the Python side never re-states
the format; and since every prefix must extend the previous one, prefix preservation is checked on
every conversation rendered (multi-turn thinking templates that break it fail here, loudly).

Masks (recipe): assistant turns are trained, except their generation prompt
(`<|im_start|>assistant\\n<think>\\n` or `...<think></think>`); system, user and tool turns are not.
The `\\n` after `<|im_end|>` is not trained: generation stops at `<|im_end|>`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from chat_template.conversation import ConversationError, has_reasoning, normalize, strip_reasoning


class MaskError(ConversationError):
    """A conversation that would train on nothing (all-zero loss mask)."""


@dataclass
class Rendered:
    input_ids: list[int]
    loss_mask: list[int]  # 1 where the token is a training target (aligned with input_ids)
    text: str

    def __len__(self) -> int:
        return len(self.input_ids)


def render_text(tokenizer, messages: list[dict], tools: list[dict] | None = None, *,
                add_generation_prompt: bool = False, enable_thinking: bool = True,
                truncate_history_thinking: bool = True) -> str:
    """The template's rendering: exactly what transformers and vLLM produce for these messages."""
    return tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt,
        enable_thinking=enable_thinking, truncate_history_thinking=truncate_history_thinking)


def prompt_ids(tokenizer, messages: list[dict], tools: list[dict] | None = None, *,
               enable_thinking: bool = True) -> list[int]:
    """Token ids of a generation prompt (RL rollouts, judges, eval)."""
    messages, tools = normalize(messages, tools)
    text = render_text(tokenizer, messages, tools, add_generation_prompt=True, enable_thinking=enable_thinking)
    return _encode(tokenizer, text)


def continuation_ids(tokenizer, messages: list[dict], tools: list[dict] | None = None, *,
                     enable_thinking: bool = True) -> list[int]:
    """Token ids to append after a generated assistant turn (which ended with `<|im_end|>`) to feed
    `messages` back (tool results, a user turn) and open the next assistant turn (multi-turn RL).

    The template's own text between the two, found by rendering a stand-in conversation with and
    without `messages`, so the format is still stated only in the template.
    """
    probe = [{"role": "user", "content": "-"}, {"role": "assistant", "content": "-"}]
    before = render_text(tokenizer, probe, tools)
    after = render_text(tokenizer, probe + list(messages), tools, add_generation_prompt=True,
                        enable_thinking=enable_thinking)
    if not (before.endswith("<|im_end|>\n") and after.startswith(before)):
        raise ConversationError("the template does not continue an assistant turn with these messages")
    return _encode(tokenizer, after[len(before) - 1:])  # from the newline after <|im_end|>


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _segments(tokenizer, messages: list[dict], tools) -> list[tuple[str, str, int]]:
    """(text, kind, message index) pieces whose concatenation is the full rendering.

    `messages` is already materialised (history reasoning dropped), so every prefix renders the
    same as its span in the full conversation. kind is the role, or "prompt" for the assistant
    generation prompt and the newline after `<|im_end|>` (never trained).
    """
    first = 1 if messages[0]["role"] == "system" else 0

    def prefix(k: int, **kw) -> str:  # the always-present system turn stands in for "no messages"
        return render_text(tokenizer, messages[:k] or [{"role": "system", "content": ""}], tools, **kw)

    prev = prefix(first)
    pieces = [(prev, "system", 0 if first else -1)]
    for k in range(first, len(messages)):
        if messages[k]["role"] == "tool" and k + 1 < len(messages) and messages[k + 1]["role"] == "tool":
            continue  # consecutive tool results form one user turn: cut after the group
        cur = prefix(k + 1)
        if not cur.startswith(prev):
            raise ConversationError(
                f"messages[{k}]: prefix preservation violated: rendering the conversation up to this "
                f"message changes the text of earlier turns")
        piece, role = cur[len(prev):], messages[k]["role"]
        if role == "assistant":
            gen = prefix(k, add_generation_prompt=True,
                         enable_thinking=bool(messages[k].get("reasoning_content")))[len(prev):]
            if not piece.startswith(gen):
                raise ConversationError(f"messages[{k}]: assistant turn does not start with the "
                                        f"generation prompt {gen!r}")
            body, tail = piece[len(gen):], ""
            if body.endswith("<|im_end|>\n"):
                body, tail = body[:-1], "\n"
            pieces += [(gen, "prompt", k), (body, "assistant", k), (tail, "prompt", k)]
        else:
            pieces.append((piece, role, k))
        prev = cur
    return pieces


def render_with_mask(tokenizer, messages: list[dict], tools: list[dict] | None = None, *,
                     train_roles: Iterable[str] = ("assistant",), train_from: int = 0,
                     allow_empty_mask: bool = False) -> Rendered:
    """Token ids and loss mask for one training sequence.

    Only messages with index >= `train_from` are trained (per-user-turn splitting uses it). The
    reasoning of assistant turns before the last user turn is dropped, as the template does.
    """
    messages, tools = normalize(messages, tools)
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    messages = [strip_reasoning(m) if m["role"] == "assistant" and i < last_user else m
                for i, m in enumerate(messages)]
    train_roles = set(train_roles)
    ids: list[int] = []
    mask: list[int] = []
    for text, kind, index in _segments(tokenizer, messages, tools):
        toks = _encode(tokenizer, text) if text else []
        trained = kind in train_roles and index >= train_from
        ids += toks
        mask += [int(trained)] * len(toks)
    full = render_text(tokenizer, messages, tools)
    if ids != _encode(tokenizer, full):
        raise ConversationError("token boundary mismatch: tokenizing message by message differs from "
                                "tokenizing the whole rendering (a BPE merge crosses a turn boundary)")
    if not any(mask) and not allow_empty_mask:
        raise MaskError(f"no trainable tokens: no {'/'.join(sorted(train_roles))} turn with content "
                        f"at or after messages[{train_from}] (all-zero loss mask)")
    return Rendered(ids, mask, full)


def training_sequences(tokenizer, messages: list[dict], tools: list[dict] | None = None, *,
                       train_roles: Iterable[str] = ("assistant",)) -> list[Rendered]:
    """The recipe's SFT sequences for one conversation.

    With reasoning anywhere, one sequence per user turn: the conversation up to the next user
    message, training only the turns after that user message (earlier turns appear as the template
    renders history: reasoning dropped, masked). Without reasoning, one sequence training every
    assistant turn.
    """
    messages, tools = normalize(messages, tools)
    if not has_reasoning(messages):
        return [render_with_mask(tokenizer, messages, tools, train_roles=train_roles)]
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    out = []
    for j, u in enumerate(users):
        end = users[j + 1] if j + 1 < len(users) else len(messages)
        if not any(m["role"] in set(train_roles) for m in messages[u + 1:end]):
            continue  # a user turn with no reply in this row: nothing to train
        out.append(render_with_mask(tokenizer, messages[:end], tools, train_roles=train_roles, train_from=u + 1))
    if not out:
        raise MaskError("no trainable tokens: no assistant reply follows any user turn (all-zero loss mask)")
    return out
