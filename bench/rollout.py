"""Rollout throughput of our generation backends (grpo/rollout.py): HF generate (the GPU image has
no vLLM) and vLLM where installed, on the same model, prompts, group size and lengths, in one run.
Prints one JSON line per backend and run (generated tokens/s, seconds per batch), then the
vLLM / HF ratio when both ran.

    python -m bench.rollout [--model tiny] [--prompts 16] [--group 8] [--max-new 128] [--repeats 2]
                            [--backends hf,vllm]                                  (make bench-rollout)

The model is `configs/model/<name>.yaml` built with its seed and saved once under
runs/bench_rollout/<name>/ (a random-init model mostly runs to --max-new tokens: a throughput
measurement, not a quality one); `--model-dir` uses a checkpoint instead. Prompts are the
built-in math tasks rendered with the chat template. One batch = prompts x group samples, at
temperature 1, with the per-token log-probs the RL loop needs.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench import alternate


def model_dir(a) -> str:
    if a.model_dir:
        return a.model_dir
    out = Path(a.workdir) / a.model
    if not (out / "config.json").is_file():
        from common.models import build_model, load_tokenizer
        from stages.checkpoint import save_pretrained
        from stages.config import load_config
        from stages.schema import RunConfig

        cfg = load_config(RunConfig, None, [f"model={a.model}"]).model
        tok = load_tokenizer(cfg)
        save_pretrained(build_model(cfg, tok, device=None), tok, out)
    return str(out)


def run(a, backend: str) -> dict:
    import torch
    from transformers import AutoTokenizer

    from chat_template.render import prompt_ids
    from grpo.rollout import BACKENDS, SamplingConfig
    from stages.run import builtin_data

    path = model_dir(a)
    tok = AutoTokenizer.from_pretrained(path)
    tasks = [json.loads(ln) for ln in open(builtin_data("builtin:math_train", Path(a.workdir) / "data", 0))]
    prompts = [prompt_ids(tok, t["messages"]) for t in tasks[: a.prompts]]
    engine = BACKENDS[backend](path, seed=0, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                               max_model_len=2048)
    sampling = SamplingConfig(max_new_tokens=a.max_new, temperature=1.0)
    engine.generate(prompts, a.group, sampling, seed=0)  # warm-up (kernels, caches)
    times, tokens = [], []
    for i in range(a.batches):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        groups = engine.generate(prompts, a.group, sampling, seed=i + 1)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        tokens.append(sum(len(s.response_ids) for g in groups for s in g))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"bench": "rollout", "trainer": backend, "model": a.model_dir or a.model, "prompts": a.prompts,
            "group_size": a.group, "max_new_tokens": a.max_new, "device": device,
            "gen_tokens_per_s": sum(tokens) / sum(times), "batch_s": sum(times) / len(times),
            "mean_response_tokens": sum(tokens) / (len(tokens) * a.prompts * a.group), "torch": torch.__version__}


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m bench.rollout")
    p.add_argument("--model", default="tiny", help="a configs/model/<name>.yaml")
    p.add_argument("--model-dir", help="an HF checkpoint directory instead of --model")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--max-new", type=int, default=128)
    p.add_argument("--batches", type=int, default=3, help="timed batches per run")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--backends", default="hf,vllm")
    p.add_argument("--workdir", default="runs/bench_rollout")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = parse(argv)
    if a.child:
        print(json.dumps(run(a, a.child)), flush=True)
        return 0
    model_dir(a)  # build once, before the children
    backends = [b for b in a.backends.split(",") if b]
    best = alternate("bench.rollout", argv, backends, a.repeats, "gen_tokens_per_s", lower_is_better=False,
                     head={"bench": "rollout", "model": a.model_dir or a.model})
    if {"hf", "vllm"} <= best.keys():
        print(json.dumps({"bench": "rollout", "ratio_gen_tokens_per_s_vllm_over_hf":
                          best["vllm"]["gen_tokens_per_s"] / best["hf"]["gen_tokens_per_s"]}))
    return 0 if len(best) == len(backends) else 1


if __name__ == "__main__":
    raise SystemExit(main())
