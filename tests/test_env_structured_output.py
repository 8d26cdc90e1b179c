"""The structured_output environment: the final answer must be JSON (alone) that fits the schema."""
import json

import pytest

import grpo.envs.structured_output  # noqa: F401  (registers "structured_output")
from grpo.envs import make
from grpo.envs.structured_output import generate_tasks

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "color": {"enum": ["red", "green"]},
        "items": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}},
                                             "required": ["name"]}},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
TASK = {"id": "t", "env": "structured_output", "messages": [], "schema": SCHEMA}


def reply(answer: str) -> str:
    return f"I should write JSON.\n</think>\n{answer}<|im_end|>"


def score(answer: str, task: dict = TASK):
    return make("structured_output").score(task, reply(answer))


@pytest.mark.parametrize("answer", [
    '{"name": "Ann", "age": 3}',
    '\n  {"name": "Ann", "age": 0, "color": "red", "items": [{"name": "x"}]}  \n',
    '```json\n{"name": "Ann", "age": 3}\n```',
    '```\n{"name": "Ann", "age": 3}\n```',
])
def test_valid_answers_pass(answer):
    s = score(answer)
    assert (s.reward, s.reason, s.info) == (1.0, "correct", {"valid_json": 1.0})


@pytest.mark.parametrize("answer", [
    '{"name": "Ann", "age": 3} Hope this helps!',
    'Here is the JSON: {"name": "Ann", "age": 3}',
    'Sure!\n```json\n{"name": "Ann", "age": 3}\n```',
    '```json\n{"name": "Ann", "age": 3}\n```\nDone.',
])
def test_text_around_the_json_fails(answer):
    s = score(answer)
    assert (s.reward, s.reason, s.info) == (0.0, "text around the JSON", {"valid_json": 0.0})


@pytest.mark.parametrize("answer, reason", [
    ('{"name": "Ann", "age": "3"}', "schema violation at $.age: '3' is not of type 'integer'"),
    ('{"name": "Ann"}', "schema violation at $: 'age' is a required property"),
    ('{"name": "Ann", "age": 3, "color": "blue"}',
     "schema violation at $.color: 'blue' is not one of ['red', 'green']"),
    ('{"name": "Ann", "age": -3}', "schema violation at $.age: -3 is less than the minimum of 0"),
    ('{"name": "Ann", "age": 3, "extra": 1}', "schema violation at $: Additional properties are not allowed"),
    ('{"name": "Ann", "age": 3, "items": [{"name": "a"}, {"name": 2}]}',
     "schema violation at $.items[1].name: 2 is not of type 'string'"),
    ('{"name": "Ann", "age": 3, "items": [{"name": "a"}, {}]}',
     "schema violation at $.items[1]: 'name' is a required property"),
    ('[1, 2]', "schema violation at $: [1, 2] is not of type 'object'"),
])
def test_schema_violations_fail_with_path(answer, reason):
    s = score(answer)
    assert s.reward == 0.0 and s.reason.startswith(reason), s.reason
    assert s.info == {"valid_json": 1.0}


@pytest.mark.parametrize("answer", ['{"name": "Ann" "age": 3}', "name: Ann, age: 3", "", "{'name': 'Ann'}"])
def test_not_json_fails(answer):
    s = score(answer)
    assert s.reward == 0.0 and s.reason.startswith("not JSON"), s.reason
    assert s.info == {"valid_json": 0.0}


def test_not_json_reason_says_where():
    assert score('{"name" "Ann"}').reason == "not JSON: Expecting ':' delimiter at line 1 column 9"


def test_only_the_final_answer_counts():
    env = make("structured_output")
    assert env.score(TASK, '{"name": "Ann", "age": 3}\n</think>\nname is Ann<|im_end|>').reward == 0.0
    assert env.score(TASK, '{"name": "Ann", "age": 3}').reward == 0.0  # reasoning never closed
    assert env.score({**TASK, "enable_thinking": False}, '{"name": "Ann", "age": 3}<|im_end|>').reward == 1.0


def test_schema_draft_follows_dollar_schema():
    # Draft 4 reads exclusiveMinimum as a boolean; Draft 2020-12 would reject this schema.
    draft4 = {"$schema": "http://json-schema.org/draft-04/schema#", "type": "integer",
              "minimum": 0, "exclusiveMinimum": True}
    assert score("1", {"schema": draft4}).reward == 1.0
    assert score("0", {"schema": draft4}).reason.startswith("schema violation at $: 0 is less than or equal to")
    with pytest.raises(ValueError, match="invalid schema"):
        score("1", {"schema": {k: v for k, v in draft4.items() if k != "$schema"}})
    # Without `$schema`, Draft 2020-12 (whose prefixItems Draft 4 would ignore).
    tuple_schema = {"prefixItems": [{"type": "integer"}]}
    assert score('["x"]', {"schema": tuple_schema}).reason.startswith("schema violation at $[0]")


@pytest.mark.parametrize("task", [{"schema": {"type": "no-such-type"}}, {"schema": {"required": "name"}},
                                  {"messages": []}, {"schema": "a string"}])
def test_malformed_task_raises(task):
    with pytest.raises(ValueError, match="schema"):
        score("{}", task)


def _valid_instance(schema: dict) -> dict:
    def value(p):
        if "enum" in p:
            return p["enum"][-1]
        return {"string": "x", "integer": p.get("minimum", 0), "boolean": False}[p["type"]]
    return {k: value(p) for k, p in schema["properties"].items()}


def test_generate_tasks():
    tasks = generate_tasks(30, seed=5)
    assert json.dumps(tasks) == json.dumps(generate_tasks(30, seed=5))
    assert tasks != generate_tasks(30, seed=6)
    assert tasks[0]["id"] == "json-5-0" and all(t["env"] == "structured_output" for t in tasks)
    env = make("structured_output")
    for t in tasks:
        props = t["schema"]["properties"]
        assert 1 <= len(t["schema"]["required"]) <= 3
        assert all(f'"{k}"' in t["messages"][0]["content"] for k in props)  # every key is described
        good = _valid_instance(t["schema"])
        assert env.score(t, reply(json.dumps(good))).reward == 1.0
        k = next(iter(props))
        for bad in [{**good, k: [1]}, {**good, "other": 1}, {kk: v for kk, v in good.items() if kk != k}]:
            s = env.score(t, reply(json.dumps(bad)))
            assert s.reward == 0.0 and s.reason.startswith("schema violation at $"), s.reason
    kinds = {tuple(sorted(p)) for t in tasks for p in t["schema"]["properties"].values()}
    assert {("enum", "type"), ("minimum", "type"), ("type",)} <= kinds  # enums, minimums and plain types all occur
