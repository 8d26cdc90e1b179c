"""The tool_use environment (SQLite workplace tools, multi-turn) and the multi-turn rollout runner:
tools and their errors, episodes stepped turn by turn, only policy tokens trained."""
import json

import pytest

from chat_template.render import continuation_ids
from common.models import ModelConfig, load_tokenizer
from grpo.envs import EnvPool, make
from grpo.envs.tool_use import Database, generate_tasks, run_calls
from grpo.multiturn import run_episodes
from grpo.rollout import Sample
from grpo.trainer import build_batch

DB = {"people": [{"id": 1, "name": "Alice", "email": "a@x", "team": "Sales"}],
      "tasks": [{"id": 1, "title": "Write report", "owner": "Alice", "status": "open"},
                {"id": 2, "title": "Fix printer", "owner": "Alice", "status": "open"}]}
TASK = {"id": "t", "env": "tool_use", "messages": [{"role": "user", "content": "Mark 'Write report' done."}],
        "db": DB, "expected_db": {**DB, "tasks": [{**DB["tasks"][0], "status": "done"}, DB["tasks"][1]]}}


def call(name: str, **args) -> str:
    params = "".join(f"<parameter={k}>\n{v if isinstance(v, str) else json.dumps(v)}\n</parameter>\n"
                     for k, v in args.items())
    return f"<tool_call>\n<function={name}>\n{params}</function>\n</tool_call>\n"


def turn(*calls: str, answer: str = "") -> str:
    return "thinking\n</think>\n" + answer + "".join(calls) + "<|im_end|>"


def test_tools_run_parameterised_sql_and_report_errors():
    db = Database(DB)
    assert db.call("search_records", {"table": "tasks", "query": "report"}) == [DB["tasks"][0]]
    assert db.call("read_record", {"table": "people", "id": "1"})["name"] == "Alice"
    assert db.call("create_record", {"table": "tasks", "fields": {"title": "New", "owner": "Bob"}}) == {"id": 3}
    assert db.call("update_record", {"table": "tasks", "id": 1, "fields": {"status": "done"}}) == {"updated": 1}
    assert db.dump()["tasks"][0]["status"] == "done" and db.dump()["tasks"][2]["status"] is None
    messages, state = run_calls(DB, [{"name": "update_record", "arguments": {"table": "tasks", "id": 9, "fields": {}}},
                                     {"name": "read_record", "arguments": {"table": "x; DROP TABLE tasks", "id": 1}},
                                     {"name": "update_record", "arguments": {"table": "tasks", "id": 2,
                                                                             "fields": {"status); --": "x"}}},
                                     {"name": "delete_all", "arguments": {"table": "tasks"}}])
    assert [json.loads(m["content"])["error"] for m in messages] == [
        "no record 9 in tasks", "unknown table 'x; DROP TABLE tasks' (people or tasks)",
        "fields must be an object with keys from ['title', 'owner', 'status']", "unknown tool 'delete_all'"]
    assert state == Database(DB).dump()  # nothing changed, the SQL never saw the model's text


def test_episode_steps_and_final_database_decides():
    env = make("tool_use")
    state = env.initial_state(TASK)
    msgs, state = env.step(TASK, state, turn(call("search_records", table="tasks", query="Write report")))
    assert json.loads(msgs[0]["content"]) == [DB["tasks"][0]]
    msgs, state = env.step(TASK, state, turn(call("update_record", table="tasks", id=1, fields={"status": "done"})))
    assert json.loads(msgs[0]["content"]) == {"updated": 1}
    assert env.step(TASK, state, turn(answer="Done."))[0] is None  # an answer ends the episode
    assert env.score(TASK, "", state).reward == 1.0
    wrong = env.step(TASK, env.initial_state(TASK), turn(call("update_record", table="tasks", id=2,
                                                               fields={"status": "done"})))[1]
    assert (env.score(TASK, "", wrong).reward, env.score(TASK, "", wrong).reason) == (0.0, "database not as expected")
    assert env.score(TASK, "", DB).reason == "database unchanged"
    # a call inside the reasoning is not a call
    in_reasoning = call("update_record", table="tasks", id=1, fields={"status": "done"}) + "</think>\nok"
    assert env.step(TASK, DB, in_reasoning)[0] is None


def test_transcript_replay_for_offline_scoring():
    """Without a state the transcript's calls are replayed, turn by turn (tool results ignored)."""
    tok = load_tokenizer(ModelConfig())
    feed = tok.decode(continuation_ids(tok, [{"role": "tool", "content": "[]"}]))
    transcript = turn(call("search_records", table="tasks", query="report")) + feed + \
        turn(call("update_record", table="tasks", id=1, fields={"status": "done"})) + feed + turn(answer="Done.")
    env = make("tool_use")
    assert env.score(TASK, transcript).reward == 1.0
    assert env.score(TASK, turn(answer="I marked it done.")).reason == "database unchanged"


@pytest.mark.parametrize("seed", [0, 1])
def test_generated_tasks_are_solvable(seed):
    env = make("tool_use")
    for task in generate_tasks(12, seed):
        exp, db = task["expected_db"], task["db"]
        assert exp != db and task["tools"] and task["messages"][0]["content"]
        calls = []
        for table in ("people", "tasks"):
            for before, after in zip(db[table], exp[table]):
                if before != after:
                    calls.append(call("update_record", table=table, id=after["id"],
                                      fields={k: v for k, v in after.items() if before[k] != v}))
            for row in exp[table][len(db[table]):]:
                calls.append(call("create_record", table=table, fields={k: v for k, v in row.items() if k != "id"}))
        assert env.score(task, turn(*calls)).reward == 1.0, task
    assert generate_tasks(5, seed) == generate_tasks(5, seed)


def test_run_episodes_masks_fed_back_tokens_and_stops():
    # a fake policy: turn k emits [10k+1, 2]; the environment feeds back [99, 98] twice, then ends
    turns = iter(range(100))

    def generate(prompts):
        return [Sample(p, [10 * next(turns) + 1, 2], [-0.5, -0.25], truncated=False) for p in prompts]

    def step(items):
        return [(None if len(state) >= 2 else [{"role": "tool", "content": "r"}], state + [text], None)
                for task, state, text in items]

    out = run_episodes([{"env": "x"}], [[1, 2, 3]], 2, generate=generate, initial_states=lambda ts: [[] for _ in ts],
                       step=step, feed_back=lambda t, m: [99, 98], decode=str, max_turns=lambda t: 5,
                       max_len=100, max_new_tokens=4)
    s = out[0][0]
    assert len(out) == 1 and len(out[0]) == 2 and not s.truncated and s.env_error is None
    assert s.mask == [1, 1, 0, 0, 1, 1, 0, 0, 1, 1] and len(s.response_ids) == len(s.logprobs) == 10
    assert [lp for lp, m in zip(s.logprobs, s.mask) if not m] == [0.0] * 4 and len(s.env_state) == 3
    batch = build_batch([s], [1.0], [True], pad_id=0)
    assert batch.response_mask[0].tolist() == [0, 0] + s.mask and batch.generated_mask.equal(batch.response_mask)
    # turn limit, budget and environment errors end episodes early
    one = run_episodes([{"env": "x"}], [[1]], 1, generate=generate, initial_states=lambda ts: [[]], step=step,
                       feed_back=lambda t, m: [99, 98], decode=str, max_turns=lambda t: 1, max_len=100,
                       max_new_tokens=4)[0][0]
    assert one.mask == [1, 1] and not one.truncated
    short = run_episodes([{"env": "x"}], [[1]], 1, generate=generate, initial_states=lambda ts: [[]], step=step,
                         feed_back=lambda t, m: [99, 98], decode=str, max_turns=lambda t: 5, max_len=8,
                         max_new_tokens=4)[0][0]
    assert short.truncated and short.mask == [1, 1]
    failing = run_episodes([{"env": "x"}], [[1]], 1, generate=generate, initial_states=lambda ts: [[]],
                           step=lambda items: [(None, s, "error: boom") for _, s, _ in items],
                           feed_back=lambda t, m: [], decode=str, max_turns=lambda t: 5, max_len=100,
                           max_new_tokens=4)[0][0]
    assert failing.env_error == "error: boom"


def test_env_pool_steps_safely():
    bad = {**TASK, "tools": None}
    with EnvPool(["tool_use"], timeout_s=5) as pool:
        out = pool.step([(TASK, DB, turn(call("search_records", table="people", query="Ali"))), (bad, None, turn(
            call("search_records", table="people", query="x")))])
    assert json.loads(out[0][0][0]["content"])[0]["name"] == "Alice" and out[0][2] is None
    assert out[1][0] is None and out[1][2].startswith("error: ")  # a broken episode ends with its error
