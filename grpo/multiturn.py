"""Multi-turn rollouts (tool use): generate a turn, let the environment act on it, feed its
messages back, repeat. Plain functions over callables, so it runs (and is tested) without Ray.

Each episode becomes one Sample whose response holds every turn: the policy's tokens (mask 1,
with the engine's log-probs) and the tokens fed back between turns (mask 0, never trained).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from grpo.rollout import Sample


@dataclass
class Episode:
    task: dict
    sample: Sample
    state: Any
    turns: int = 0
    done: bool = False


def run_episodes(tasks: list[dict], prompts: list[list[int]], n: int, *,
                 generate: Callable[[list[list[int]]], list[Sample]],
                 initial_states: Callable[[list[dict]], list[Any]],
                 step: Callable[[list[tuple[dict, Any, str]]], list[tuple[list[dict] | None, Any, str | None]]],
                 feed_back: Callable[[dict, list[dict]], list[int]],
                 decode: Callable[[list[int]], str], max_turns: Callable[[dict], int],
                 max_len: int, max_new_tokens: int) -> list[list[Sample]]:
    """`n` episodes per task; returns [task][episode] Samples.

    generate(prompts) -> one Sample per prompt (the whole sequence so far is the prompt);
    step([(task, state, turn text)]) -> [(messages or None, new state, error or None)];
    feed_back(task, messages) -> the token ids that return `messages` and open the next turn.
    An episode ends when the environment returns None (an answer), errs, the turn limit is
    reached, or the next turn would not fit in `max_len` tokens (then it counts as truncated).
    """
    episodes = [Episode(t, Sample(list(p), [], [], False, mask=[]), None)
                for t, p in zip(tasks, prompts) for _ in range(n)]
    for e, s in zip(episodes, initial_states([e.task for e in episodes])):
        e.state = s
    while live := [e for e in episodes if not e.done]:
        outs = generate([e.sample.prompt_ids + e.sample.response_ids for e in live])
        for e, o in zip(live, outs):
            e.sample.response_ids += o.response_ids
            e.sample.logprobs += o.logprobs
            e.sample.mask += [1] * len(o.response_ids)
            e.sample.truncated, e.turns = o.truncated, e.turns + 1
            e.done = o.truncated
        acting = [(e, o) for e, o in zip(live, outs) if not e.done]
        results = step([(e.task, e.state, decode(o.response_ids)) for e, o in acting]) if acting else []
        for (e, _), (messages, state, error) in zip(acting, results):
            e.state, e.sample.env_error = state, error
            if error or messages is None or e.turns >= max_turns(e.task):
                e.done = True
                continue
            ids = feed_back(e.task, messages)
            if len(e.sample.prompt_ids) + len(e.sample.response_ids) + len(ids) + max_new_tokens > max_len:
                e.sample.truncated = e.done = True
                continue
            e.sample.response_ids += ids
            e.sample.logprobs += [0.0] * len(ids)
            e.sample.mask += [0] * len(ids)
    for e in episodes:
        e.sample.env_state = e.state
    return [[e.sample for e in episodes[i * n:(i + 1) * n]] for i in range(len(tasks))]
