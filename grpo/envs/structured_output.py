"""Structured output: the final answer must be JSON that satisfies `task["schema"]` (a JSON Schema).

The answer is the JSON alone (bare, or one ```json fenced block): a reply that wraps valid JSON in
prose is not usable structured output, so it scores 0.
"""
from __future__ import annotations

import copy
import json
import random
import re

import jsonschema

from chat_template.parse import parse_response
from grpo.envs import Environment, Score, register

_FENCE = re.compile(r"```(?:json)?[ \t]*\n(.*?)\n?[ \t]*```", re.S | re.I)


def _has_json_inside(text: str) -> bool:
    """Whether an object or array starts somewhere in `text` (tells "text around the JSON" apart)."""
    decoder = json.JSONDecoder()
    for m in list(re.finditer(r"[{\[]", text))[:50]:  # bounded: a reply full of brackets stays cheap
        try:
            decoder.raw_decode(text, m.start())
            return True
        except json.JSONDecodeError:
            pass
    return False


def parse_json_answer(answer: str) -> tuple[object, str | None]:
    """(value, None) when the whole answer is JSON (or one fenced JSON block), else (None, reason)."""
    text = answer.strip()
    fenced = _FENCE.fullmatch(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        return json.loads(text), None
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" or _has_json_inside(text):
            return None, "text around the JSON"
        return None, f"not JSON: {e.msg} at line {e.lineno} column {e.colno}"


def _short(s: str, limit: int = 200) -> str:
    return s if len(s) <= limit else s[: limit - 3] + "..."


@register
class StructuredOutputEnv(Environment):
    """Binary reward: 1 when the final answer parses as JSON and validates against the task's schema.

    The schema's own `$schema` picks the validator (default Draft 2020-12); `format` is not asserted.
    """
    name = "structured_output"

    def score(self, task: dict, response: str) -> Score:
        schema = task.get("schema")
        if not isinstance(schema, (dict, bool)):
            raise ValueError(f"task {task.get('id')!r}: 'schema' must be a JSON Schema object, got {schema!r}")
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        try:
            cls.check_schema(schema)
        except jsonschema.SchemaError as e:
            raise ValueError(f"task {task.get('id')!r}: invalid schema at {e.json_path}: {_short(e.message)}") from None
        answer = parse_response(response, thinking=task.get("enable_thinking", True)).content
        value, problem = parse_json_answer(answer)
        if problem:
            return Score(0.0, problem, {"valid_json": 0.0})
        error = jsonschema.exceptions.best_match(cls(schema).iter_errors(value))
        if error is not None:
            return Score(0.0, f"schema violation at {error.json_path}: {_short(error.message)}", {"valid_json": 1.0})
        return Score(1.0, "correct", {"valid_json": 1.0})


# Property pool for generated tasks: name -> (schema, how the prompt says it).
_PROPS = {
    "name": ({"type": "string"}, "a string \"name\""),
    "age": ({"type": "integer", "minimum": 0}, "an integer \"age\" that is at least 0"),
    "count": ({"type": "integer", "minimum": 1}, "an integer \"count\" that is at least 1"),
    "active": ({"type": "boolean"}, "a boolean \"active\""),
    "color": ({"type": "string", "enum": ["red", "green", "blue"]}, "\"color\", one of \"red\", \"green\" or \"blue\""),
    "size": ({"type": "string", "enum": ["small", "large"]}, "\"size\", either \"small\" or \"large\""),
}


def generate_tasks(n: int, seed: int) -> list[dict]:
    """Tiny object schemas (1-3 required keys, no others), described in plain words in the prompt."""
    rng, rows = random.Random(seed), []
    for i in range(n):
        keys = rng.sample(sorted(_PROPS), rng.randint(1, 3))
        schema = {"type": "object", "properties": {k: copy.deepcopy(_PROPS[k][0]) for k in keys}, "required": keys,
                  "additionalProperties": False}
        said = [_PROPS[k][1] for k in keys]
        listed = said[0] if len(said) == 1 else ", ".join(said[:-1]) + " and " + said[-1]
        rows.append({"id": f"json-{seed}-{i}", "env": "structured_output", "schema": schema,
                     "messages": [{"role": "user", "content": f"Return a JSON object with {listed}, and no other keys. "
                                   "Reply with the JSON only."}]})
    return rows
