"""Parse generated assistant text: reasoning vs final answer, and qwen3_coder-style tool calls."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_CALL = re.compile(r"<tool_call>\s*<function=([^>\n]+)>(.*?)</function>\s*</tool_call>", re.S)
_PARAM = re.compile(r"<parameter=([^>\n]+)>\n?(.*?)\n?</parameter>", re.S)
_END_TOKENS = ("<|im_end|>", "<|endoftext|>")


@dataclass
class ParsedResponse:
    reasoning: str | None  # None when reasoning was off or absent
    content: str  # the final answer, tool-call blocks removed
    tool_calls: list[dict] = field(default_factory=list)  # [{"name", "arguments"}]
    reasoning_closed: bool = True  # False: `</think>` never came (truncated mid-reasoning)
    malformed_tool_calls: int = 0  # `<tool_call>` blocks that could not be parsed


def _param_types(tools: list[dict] | None) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for t in tools or []:
        f = t.get("function", t)
        props = (f.get("parameters") or {}).get("properties") or {}
        out[f.get("name")] = {k: (v or {}).get("type", "") for k, v in props.items()}
    return out


def _decode_value(raw: str, declared: str) -> Any:
    """JSON-decode a parameter value unless the tool declares it a string."""
    if declared == "string":
        return raw
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, ValueError):
        return raw


def parse_tool_calls(text: str, tools: list[dict] | None = None) -> tuple[str, list[dict], int]:
    """(text without the calls, calls, number of malformed `<tool_call>` blocks)."""
    types = _param_types(tools)
    calls = []
    for m in _CALL.finditer(text):
        name = m.group(1).strip()
        args = {p.group(1).strip(): _decode_value(p.group(2), types.get(name, {}).get(p.group(1).strip(), ""))
                for p in _PARAM.finditer(m.group(2))}
        calls.append({"name": name, "arguments": args})
    rest = _CALL.sub("", text)
    malformed = rest.count("<tool_call>")
    if malformed:
        rest = rest.split("<tool_call>")[0]
    return rest.strip(), calls, malformed


def parse_response(text: str, *, thinking: bool = True, tools: list[dict] | None = None) -> ParsedResponse:
    """Split a completion (the text after the generation prompt) into reasoning, answer, tool calls.

    thinking=True means the prompt opened `<think>\\n` (reasoning ON), so the completion starts
    inside the reasoning; without a `</think>` all of it is (unfinished) reasoning.
    """
    for end in _END_TOKENS:  # nothing after the end of the turn belongs to the response
        text = text.split(end, 1)[0]
    reasoning, closed = None, True
    if "</think>" in text:
        head, text = text.split("</think>", 1)
        reasoning = head.split("<think>")[-1].strip() or None
    elif thinking or text.lstrip().startswith("<think>"):
        return ParsedResponse(reasoning=text.replace("<think>", "", 1).strip() or None, content="",
                              reasoning_closed=False)
    content, calls, malformed = parse_tool_calls(text, tools)
    return ParsedResponse(reasoning, content, calls, closed, malformed)


def final_answer(text: str, *, thinking: bool = True) -> str:
    """Just the answer part of a completion (what verifiers and judges look at)."""
    return parse_response(text, thinking=thinking).content
