"""Serving the judge: vLLM engines on Ray actors, or an external OpenAI-compatible endpoint.

Both clients take a batch of judge chats and return one text per chat (None when the request
failed); `judge_all` sends a whole step's comparisons at once, parses the verdicts, re-asks only
the unparseable ones (up to `max_retries` times), then falls back to the published defaults.
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass

from genrm.judge import DEFAULT, Judgement, parse_judgement


@dataclass
class JudgeConfig:
    backend: str = "vllm"  # vllm: Ray actors owning a vLLM engine | endpoint: OpenAI-compatible server
    model: str = ""  # vllm: checkpoint dir or hub name ("" = the genrm stage of this experiment); endpoint: model name
    url: str = ""  # endpoint: base URL, e.g. http://judge-host:8000/v1
    api_key_env: str = ""  # endpoint: the environment variable holding the API key, if any
    workers: int = 1  # vllm: judge actors (the comparisons are split over them)
    gpus_per_worker: float = 0.0
    max_model_len: int = 2048
    temperature: float = 0.6  # recipe: 0.6 / 0.95
    top_p: float = 0.95
    max_new_tokens: int = 256
    thinking: bool = True  # vllm: the judge's generation prompt opens <think> (its output starts in the reasoning)
    max_retries: int = 3  # re-asks of an unparseable verdict before the defaults
    concurrency: int = 16  # endpoint: requests in flight
    timeout_s: float = 120.0  # endpoint: per request


class VLLMJudgeWorker:
    """A Ray actor owning a vLLM engine on the judge checkpoint; chats rendered by its own template."""

    def __init__(self, model_dir: str, seed: int = 0, max_model_len: int = 2048):
        from common.vllm_engine import make_llm

        self.llm = make_llm(model_dir, seed=seed, max_model_len=max_model_len)

    def complete(self, chats: list[list[dict]], temperature: float, top_p: float, max_tokens: int) -> list[str]:
        from vllm import SamplingParams

        sp = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens, skip_special_tokens=False)
        outs = self.llm.chat(chats, sp, use_tqdm=False)
        return [o.outputs[0].text for o in outs]


class RayJudge:
    """Client over judge actors: the batch is split round-robin, the actors generate in parallel."""

    def __init__(self, actors: list, cfg: JudgeConfig):
        self.actors, self.cfg, self.thinking = actors, cfg, cfg.thinking

    def complete(self, chats: list[list[dict]]) -> list[str | None]:
        import ray

        k, c = len(self.actors), self.cfg
        parts = ray.get([a.complete.remote(chats[i::k], c.temperature, c.top_p, c.max_new_tokens)
                         for i, a in enumerate(self.actors)])
        out: list = [None] * len(chats)
        for i, part in enumerate(parts):
            out[i::k] = part
        return out


class EndpointJudge:
    """Client of an OpenAI-compatible `/chat/completions` server (e.g. vLLM serving a large GenRM).

    A request that fails (connection, HTTP error, timeout, malformed body) gives None, which
    `judge_all` treats like an unparseable verdict. Reasoning the server returns separately
    (`reasoning_content`) is not needed: the verdict is in `content`.
    """

    thinking = False  # the server's `content` is the text after any reasoning

    def __init__(self, cfg: JudgeConfig):
        if not cfg.url or not cfg.model:
            raise ValueError("judge.backend=endpoint needs judge.url and judge.model")
        self.cfg = cfg
        self.errors = 0

    def _one(self, chat: list[dict]) -> str | None:
        c = self.cfg
        body = json.dumps({"model": c.model, "messages": chat, "temperature": c.temperature, "top_p": c.top_p,
                           "max_tokens": c.max_new_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if c.api_key_env and os.environ.get(c.api_key_env):
            headers["Authorization"] = f"Bearer {os.environ[c.api_key_env]}"
        req = urllib.request.Request(c.url.rstrip("/") + "/chat/completions", body, headers)
        try:
            with urllib.request.urlopen(req, timeout=c.timeout_s) as r:
                return json.loads(r.read())["choices"][0]["message"]["content"]
        except (OSError, urllib.error.URLError, ValueError, KeyError, IndexError, TypeError):
            self.errors += 1
            return None

    def complete(self, chats: list[list[dict]]) -> list[str | None]:
        with cf.ThreadPoolExecutor(max_workers=max(1, self.cfg.concurrency)) as pool:
            return list(pool.map(self._one, chats))


def judge_all(client, chats: list[list[dict]], max_retries: int = 3) -> tuple[list[Judgement], dict]:
    """One verdict per chat, in order; unparseable ones re-asked, then the defaults.

    Stats: `judge_calls` (requests sent, retries included), `judge_parse_failures` (verdicts left at
    the defaults), `judge_retries`.
    """
    verdicts: list[Judgement | None] = [None] * len(chats)
    todo, calls = list(range(len(chats))), 0
    for attempt in range(max_retries + 1):
        if not todo:
            break
        texts = client.complete([chats[i] for i in todo])
        calls += len(todo)
        for i, text in zip(todo, texts):
            verdicts[i] = parse_judgement(text, thinking=client.thinking) if text is not None else None
        todo = [i for i in todo if verdicts[i] is None]
    stats = {"judge_calls": calls, "judge_parse_failures": len(todo), "judge_retries": calls - len(chats)}
    return [v if v is not None else DEFAULT for v in verdicts], stats
