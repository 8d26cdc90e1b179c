"""Tool use: a multi-step workplace assistant over a small in-memory SQLite database.

The model calls tools (`<tool_call>` blocks, parsed by chat_template.parse) turn by turn; each
turn's calls run against the episode's database and their results are fed back as tool messages,
until the model answers without calling a tool or the turn limit is reached. Reward 1 when the
final database equals the task's expected one: the outcome counts, not the path to it.

Task fields:
    "db":          {"people": [{"id": 1, "name": ..., "email": ..., "team": ...}], "tasks": [...]}
    "expected_db": the database after a correct episode
    "tools":       the tool schemas (TOOLS; the prompt's tools block), "max_turns": optional
Only tools with fixed, parameterised SQL run: the model never writes SQL.
"""
from __future__ import annotations

import json
import random
import sqlite3
from typing import Any

from chat_template.parse import parse_response
from grpo.envs import Environment, Score, register

SCHEMA = {"people": ["name", "email", "team"], "tasks": ["title", "owner", "status"]}


def _tool(name: str, description: str, params: dict[str, tuple[str, str]]) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": {k: {"type": t, "description": d} for k, (t, d) in params.items()},
        "required": list(params)}}}


TABLE = ("string", "people or tasks")
TOOLS = [
    _tool("search_records", "Records of a table whose fields contain the query text.",
          {"table": TABLE, "query": ("string", "text to look for")}),
    _tool("read_record", "One record by id.", {"table": TABLE, "id": ("integer", "record id")}),
    _tool("create_record", "Add a record; returns its id.",
          {"table": TABLE, "fields": ("object", "field values, e.g. {\"title\": ..., \"owner\": ...}")}),
    _tool("update_record", "Change fields of a record.",
          {"table": TABLE, "id": ("integer", "record id"), "fields": ("object", "fields to change")}),
]

TOOL_NAMES = {t["function"]["name"] for t in TOOLS}


class ToolError(Exception):
    """A bad call; its message goes back to the model as the tool result."""


class Database:
    """An episode's database: SQLite in memory, loaded from and dumped to plain dicts."""

    def __init__(self, state: dict):
        self.conn = sqlite3.connect(":memory:")
        for table, cols in SCHEMA.items():
            self.conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, {', '.join(c + ' TEXT' for c in cols)})")
            for row in state.get(table, []):
                self.conn.execute(f"INSERT INTO {table} (id, {', '.join(cols)}) VALUES (?{', ?' * len(cols)})",
                                  [row["id"], *(row.get(c) for c in cols)])

    def dump(self) -> dict:
        return {t: self._rows(t, "ORDER BY id", []) for t in SCHEMA}

    def call(self, name: str, args: dict) -> Any:
        if name not in TOOL_NAMES:
            raise ToolError(f"unknown tool {name!r}")
        table = args.get("table")
        if table not in SCHEMA:
            raise ToolError(f"unknown table {table!r} (people or tasks)")
        cols = SCHEMA[table]
        if name == "search_records":
            return self._rows(table, "WHERE " + " OR ".join(f"{c} LIKE ?" for c in cols),
                              [f"%{args.get('query', '')}%"] * len(cols))
        if name == "create_record":
            fields = self._fields(args, cols)
            names, marks = ", ".join(fields), ", ".join("?" * len(fields))
            cur = self.conn.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", list(fields.values()))
            return {"id": cur.lastrowid}
        rows = self._rows(table, "WHERE id = ?", [self._id(args)])
        if not rows:
            raise ToolError(f"no record {args.get('id')} in {table}")
        if name == "read_record":
            return rows[0]
        fields = self._fields(args, cols)
        self.conn.execute(f"UPDATE {table} SET {', '.join(f'{c} = ?' for c in fields)} WHERE id = ?",
                          [*fields.values(), self._id(args)])
        return {"updated": self._id(args)}

    @staticmethod
    def _fields(args: dict, cols: list[str]) -> dict[str, str]:
        fields = args.get("fields")
        if not isinstance(fields, dict) or not fields or set(fields) - set(cols):
            raise ToolError(f"fields must be an object with keys from {cols}")
        return {k: str(v) for k, v in fields.items()}

    def _rows(self, table: str, where: str, params: list) -> list[dict]:
        cols = ["id", *SCHEMA[table]]
        return [dict(zip(cols, r)) for r in self.conn.execute(f"SELECT {', '.join(cols)} FROM {table} {where}", params)]

    @staticmethod
    def _id(args: dict) -> int:
        try:
            return int(args.get("id"))
        except (TypeError, ValueError):
            raise ToolError(f"id must be an integer, got {args.get('id')!r}") from None


def run_calls(state: dict, calls: list[dict]) -> tuple[list[dict], dict]:
    """Execute tool calls in order: (tool messages with their results, the new state)."""
    db, messages = Database(state), []
    for call in calls:
        try:
            result = db.call(call["name"], call.get("arguments") or {})
        except ToolError as e:
            result = {"error": str(e)}
        messages.append({"role": "tool", "content": json.dumps(result)})
    return messages, db.dump()


def transcript_turns(response: str) -> list[str]:
    """The assistant turns of a multi-turn transcript (the completion after the first prompt)."""
    return [t.split("<|im_end|>")[0] for t in response.split("<|im_start|>assistant\n")]


@register
class ToolUseEnv(Environment):
    name = "tool_use"
    multi_turn = True
    max_turns = 4

    def initial_state(self, task: dict) -> dict:
        return task["db"]

    def step(self, task: dict, state: dict, turn: str) -> tuple[list[dict] | None, dict]:
        calls = parse_response(turn, thinking=task.get("enable_thinking", True), tools=task.get("tools")).tool_calls
        if not calls:
            return None, state  # an answer without tool calls ends the episode
        return run_calls(state, calls)

    def score(self, task: dict, response: str, state: dict | None = None) -> Score:
        """`state`: the episode's final database; without it (offline scoring of a transcript) the
        transcript's tool calls are replayed on the task's database."""
        if "expected_db" not in task or "db" not in task:
            raise ValueError("tool_use task needs `db` and `expected_db`")
        if state is None:
            state = task["db"]
            for turn in transcript_turns(response):
                state = self.step(task, state, turn)[1]
        final, start = Database(state).dump(), Database(task["db"]).dump()
        ok = final == Database(task["expected_db"]).dump()
        reason = ("database as expected" if ok else
                  "database unchanged" if final == start else "database not as expected")
        return Score(float(ok), reason, {"changed": float(final != start)})


NAMES = ["Alice", "Bob", "Carol", "Dave", "Eve", "Frank"]
TEAMS = ["Sales", "Data", "Ops", "Legal"]
TITLES = ["Write report", "Call client", "Fix printer", "Plan offsite", "Review budget", "Update wiki"]


def generate_tasks(n: int, seed: int) -> list[dict]:
    """Small goals that take one search and one write (or one create): mark a task done, move a
    person to another team, add a task for someone."""
    rng, out = random.Random(seed), []
    for i in range(n):
        people = [{"id": k + 1, "name": nm, "email": f"{nm.lower()}@corp.example", "team": rng.choice(TEAMS)}
                  for k, nm in enumerate(rng.sample(NAMES, 3))]
        tasks = [{"id": k + 1, "title": t, "owner": rng.choice(people)["name"], "status": "open"}
                 for k, t in enumerate(rng.sample(TITLES, 3))]
        db = {"people": people, "tasks": tasks}
        expected = json.loads(json.dumps(db))
        kind = rng.choice(["done", "team", "create"])
        if kind == "done":
            t = rng.choice(expected["tasks"])
            t["status"], goal = "done", f"Mark the task '{t['title']}' as done."
        elif kind == "team":
            p = rng.choice(expected["people"])
            p["team"] = rng.choice([x for x in TEAMS if x != p["team"]])
            goal = f"Move {p['name']} to the {p['team']} team."
        else:
            owner = rng.choice(people)["name"]
            title = rng.choice([x for x in TITLES if x not in [t["title"] for t in tasks]])
            expected["tasks"].append({"id": 4, "title": title, "owner": owner, "status": "open"})
            goal = f"Add a task '{title}' for {owner} with status open."
        out.append({"id": f"tool-{seed}-{i}", "env": "tool_use", "messages": [{"role": "user", "content": goal}],
                    "tools": TOOLS, "db": db, "expected_db": expected})
    return out
