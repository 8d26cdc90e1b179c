"""Validate and normalise OpenAI-style conversations before rendering.

The Jinja template trusts its input; this is where bad rows are caught, with the message index and
field in the error, and where equivalent spellings are made one (tool-call arguments given as a
JSON string become a mapping; `<think>` inside content becomes `reasoning_content`).
"""
from __future__ import annotations

import copy
import json
from typing import Any

ROLES = ("system", "user", "assistant", "tool")


class ConversationError(ValueError):
    """A conversation the template cannot render faithfully; the message says where and why."""


def _fail(where: str, msg: str) -> ConversationError:
    return ConversationError(f"{where}: {msg}")


def split_think(content: str) -> tuple[str | None, str]:
    """`<think>r</think>answer` -> ('r', 'answer'); text without `</think>` -> (None, text)."""
    if "</think>" not in content:
        return None, content
    head, answer = content.rsplit("</think>", 1)
    return head.split("<think>")[-1].strip(), answer.strip()


def _tool_name(tool: Any) -> str | None:
    f = tool.get("function", tool) if isinstance(tool, dict) else None
    return f.get("name") if isinstance(f, dict) else None


def normalize(messages: Any, tools: Any = None) -> tuple[list[dict], list[dict] | None]:
    """Checked, normalised copies of (messages, tools). Raises ConversationError naming the spot."""
    if not isinstance(messages, list) or not messages:
        raise ConversationError("messages: must be a non-empty list of {role, content} objects")
    if tools is not None and not isinstance(tools, list):
        raise ConversationError("tools: must be a list of function definitions")
    tool_names = set()
    for i, t in enumerate(tools or []):
        name = _tool_name(t)
        if not name:
            raise _fail(f"tools[{i}]", "a tool needs a function name")
        tool_names.add(name)
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _fail(where, "must be an object with `role` and `content`")
        role = m.get("role")
        if role not in ROLES:
            raise _fail(f"{where}.role", f"unknown role {role!r} (expected one of {', '.join(ROLES)})")
        if role == "system" and i != 0:
            raise _fail(f"{where}.role", "a system message may only come first")
        m = copy.deepcopy(m)
        content = m.get("content")
        if content is None and role == "assistant":
            content = ""
        if not isinstance(content, str):
            raise _fail(f"{where}.content", f"must be a string, got {type(content).__name__}")
        m["content"] = content
        if role == "assistant":
            _normalize_assistant(m, where, tool_names, tools)
        elif m.get("tool_calls"):
            raise _fail(f"{where}.tool_calls", f"only assistant messages make tool calls, not {role}")
        if "<tool_call>" in content and not tools:
            raise _fail(f"{where}.content", "contains a <tool_call> but the row declares no tools")
        out.append(m)
    if all(m["role"] == "system" for m in out):
        raise ConversationError("messages: a conversation needs at least one user or assistant turn")
    return out, copy.deepcopy(tools) if tools else None


def _normalize_assistant(m: dict, where: str, tool_names: set, tools: Any) -> None:
    reasoning = m.get("reasoning_content")
    if reasoning is not None and not isinstance(reasoning, str):
        raise _fail(f"{where}.reasoning_content", f"must be a string, got {type(reasoning).__name__}")
    if not reasoning:
        inline, answer = split_think(m["content"])
        if inline is not None:
            reasoning, m["content"] = inline, answer
    m["reasoning_content"] = reasoning or None
    calls = m.get("tool_calls") or []
    if not isinstance(calls, list):
        raise _fail(f"{where}.tool_calls", "must be a list")
    if not m["content"].strip() and not calls:
        raise _fail(where, "assistant turn has neither content nor tool_calls")
    if calls and not tools:
        raise _fail(f"{where}.tool_calls", "tool calls need a `tools` list in the row")
    norm = []
    for j, call in enumerate(calls):
        cw = f"{where}.tool_calls[{j}]"
        fn = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not fn.get("name"):
            raise _fail(cw, "a tool call needs a function name")
        if fn["name"] not in tool_names:
            raise _fail(f"{cw}.name", f"calls {fn['name']!r}, which is not in the row's tools")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as e:
                raise _fail(f"{cw}.arguments", f"not valid JSON ({e.msg})") from None
        if not isinstance(args, dict):
            raise _fail(f"{cw}.arguments", "must be an object of parameter -> value")
        norm.append({"type": "function", "function": {"name": fn["name"], "arguments": args}})
    m["tool_calls"] = norm or None


def has_reasoning(messages: list[dict]) -> bool:
    return any(m["role"] == "assistant" and m.get("reasoning_content") for m in messages)


def strip_reasoning(message: dict) -> dict:
    """The message as the template renders history turns: no reasoning."""
    return {**message, "reasoning_content": None}
