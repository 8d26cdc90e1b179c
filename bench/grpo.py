"""GRPO step time: our RLVR stage (Ray, vLLM rollout actor, trainer actor) vs TRL's `GRPOTrainer`
with vLLM colocated, on the same start model, math tasks and verifier, group size, lengths and loss
settings, in one script run. Prints one JSON line per measured run, then one with the ratios.

    python -m bench.grpo [--prompts 8] [--group 8] [--max-new 48] [--steps 6] [--warmup 2]
                         [--sft-steps 960] [--model tiny] [--workdir runs/bench_grpo]   (make bench-grpo)

Start model: our SFT stage on `--model` (960 steps, ~2 minutes, run once into `--workdir` and
reused after), so the policy solves ~20% of the tasks and rewards vary within groups as in RLVR. Both sides then run
`--warmup + --steps` optimizer steps of `--prompts` x `--group` samples (one optimizer step per
generation batch, no KL, clip 0.2/0.28 token-level loss, lr 1e-5 constant, vLLM importance-sampling
correction on both, the whole batch in one micro-batch) and are timed over the last `--steps`.
Phases: generate, score, logprobs (old-policy forward), update (everything else in the step: loss,
backward, optimizer, batching), refit (weights into vLLM). Each side runs in its own process.

TRL 1.16 supports vLLM <= 0.31 and loads colocated weights one tensor at a time with
`model.load_weights`, which vLLM 0.32 no longer allows after start-up; the only change made to TRL
is `sync_weights` doing the same through vLLM's `reload_weights` (what our refit calls), once per
step with every weight, under the checkpoint names vLLM reads.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench import alternate

PHASES = ("generate", "score", "logprobs", "update", "refit")


def common_args(a) -> dict:
    return {"bench": "grpo", "model": a.model, "prompts_per_step": a.prompts, "group_size": a.group,
            "max_new_tokens": a.max_new, "steps_timed": a.steps}


def summarize(a, who: str, steps: list[dict], gen_tokens: list[int], extra: dict) -> dict:
    """`steps`: per-step {"step_s", phase seconds}; averaged over the timed (last a.steps) ones."""
    timed, toks = steps[-a.steps:], gen_tokens[-a.steps:]
    mean = {k: float(np.mean([s[k] for s in timed])) for k in ("step_s", *PHASES)}
    return {**common_args(a), "trainer": who, **{f"{k}_s" if k != "step_s" else k: v for k, v in mean.items()},
            "gen_tokens_per_s": sum(toks) / sum(s["generate"] for s in timed),
            "refit_share": mean["refit"] / mean["step_s"], **extra}


# ---------------------------------------------------------------------- ours
def run_ours(a) -> dict:
    work = Path(a.workdir)
    shutil.rmtree(work / "bench" / "rlvr", ignore_errors=True)
    cmd = [sys.executable, "-m", "stages.rlvr", "--config", "configs/rlvr.yaml", "exp=bench", f"runs_dir={work}",
           f"model={a.model}", f"grpo.max_steps={a.warmup + a.steps}", f"grpo.prompts_per_step={a.prompts}",
           f"grpo.group_size={a.group}", f"grpo.sampling.max_new_tokens={a.max_new}", "grpo.val_tasks=[]",
           "grpo.optim.lr=1e-5", "grpo.optim.warmup_steps=0", f"grpo.optim.micro_batch_size={a.prompts * a.group}",
           "checkpoint.every_steps=0", f"seed={a.seed}"]
    with open(work / "ours.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=log)
    rows = [json.loads(ln) for ln in open(work / "bench" / "rlvr" / "metrics.jsonl")]
    rows = [r for r in rows if "loss" in r]
    steps = []
    for prev, r in zip(rows, rows[1:]):  # wall time between step records: the whole loop, not just phases
        steps.append({"step_s": r["time_s"] - prev["time_s"], **{p: r.get(f"time/{p}_s", 0.0) for p in PHASES}})
    steps = [{**s, "update": s["update"] + s["step_s"] - sum(s[p] for p in PHASES)} for s in steps]  # the rest
    gen = [r["gen_tokens_per_s"] * r["time/generate_s"] for r in rows[1:]]
    return summarize(a, "nano-posttrain rlvr", steps, gen, {
        "reward_mean": float(np.mean([r["reward/mean"] for r in rows[-a.steps:]])),
        "zero_variance_fraction": float(np.mean([r["zero_variance_fraction"] for r in rows[-a.steps:]]))})


# ---------------------------------------------------------------------- TRL
def math_reward_fn():
    from grpo import envs

    env = envs.make("math")

    def math_verifier(prompts, completions, answer, id, **_):  # noqa: A002 - TRL passes dataset columns by name
        return [env.score({"id": i, "env": "math", "answer": ans}, c).reward
                for i, ans, c in zip(id, answer, completions)]

    return math_verifier


def patch_trl_refit():
    """TRL 1.16's colocated weight sync for vLLM 0.32 (see the module docstring)."""
    from transformers.core_model_loading import revert_weight_conversion
    from trl.generation.vllm_generation import VLLMGeneration

    def sync_weights(self):
        model = self.accelerator.unwrap_model(self.model)
        state = {k: v.detach() for k, v in model.state_dict().items()}
        weights = revert_weight_conversion(model, state)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(weights.items())})
        self.llm.reset_prefix_cache()

    VLLMGeneration.sync_weights = sync_weights


def run_trl(a) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from chat_template.conversation import normalize
    from chat_template.render import render_text
    from common.vllm_engine import cpu_env_defaults
    from stages.run import builtin_data

    cpu = not torch.cuda.is_available()
    if cpu:
        cpu_env_defaults()
    model_dir = str(Path(a.workdir) / "bench" / "sft" / "model")
    tok = AutoTokenizer.from_pretrained(model_dir)
    task_file = builtin_data("builtin:math_train", Path(a.workdir) / "bench" / "data", a.seed)  # ours writes it too
    tasks = [json.loads(ln) for ln in open(task_file)]
    text = [render_text(tok, *normalize(t["messages"]), add_generation_prompt=True, enable_thinking=True)
            for t in tasks]
    ds = Dataset.from_dict({"prompt": text, "answer": [t["answer"] for t in tasks], "id": [t["id"] for t in tasks]})
    patch_trl_refit()
    clock: dict[str, float] = dict.fromkeys(PHASES, 0.0)
    steps, gen_tokens, ends = [], [], []

    def timed(obj, name, phase, only=None):
        fn = getattr(obj, name)

        def wrapper(*args, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                if only is None or only():
                    clock[phase] += time.perf_counter() - t0
        setattr(obj, name, wrapper)

    class Clock(TrainerCallback):
        def on_train_begin(self, *_a, **_k):
            ends.append(time.perf_counter())

        def on_step_end(self, *_a, **_k):
            ends.append(time.perf_counter())
            s = dict(clock)
            s["generate"] -= s["refit"]  # TRL syncs weights inside its generate call
            s["step_s"] = ends[-1] - ends[-2]
            s["update"] = s["step_s"] - sum(s[p] for p in PHASES)
            steps.append(s)
            gen_tokens.append(trainer._metrics["train"]["completions/mean_length"][-1] * a.prompts * a.group)
            clock.update(dict.fromkeys(PHASES, 0.0))

    args = GRPOConfig(
        output_dir=str(Path(a.workdir) / "trl_out"), use_vllm=True, vllm_mode="colocate", use_cpu=cpu, bf16=not cpu,
        vllm_gpu_memory_utilization=0.1 if cpu else 0.3, vllm_max_model_length=2048, seed=a.seed,
        per_device_train_batch_size=a.prompts * a.group, num_generations=a.group, steps_per_generation=1,
        num_iterations=1, max_completion_length=a.max_new, temperature=1.0, beta=0.0, loss_type="dapo",
        epsilon=0.2, epsilon_high=0.28, learning_rate=1e-5, lr_scheduler_type="constant", warmup_steps=0,
        max_grad_norm=1.0, adam_beta1=0.9, adam_beta2=0.999, weight_decay=0.0, max_steps=a.warmup + a.steps,
        mask_truncated_completions=True,  # like our overlong filtering: truncated answers get no loss
        logging_steps=1, report_to=[], save_strategy="no", disable_tqdm=True, dataloader_num_workers=0)
    trainer = GRPOTrainer(model=model_dir, reward_funcs=math_reward_fn(), args=args, train_dataset=ds,
                          processing_class=tok, callbacks=[Clock()])
    timed(trainer.vllm_generation, "sync_weights", "refit")
    timed(trainer, "_generate_single_turn", "generate")
    timed(trainer, "_calculate_rewards", "score")
    timed(trainer, "_get_per_token_logps_and_entropies", "logprobs", only=lambda: not torch.is_grad_enabled())
    trainer.train()
    hist = [h for h in trainer.state.log_history if "reward" in h]
    return summarize(a, f"trl {trl.__version__} GRPOTrainer (vLLM colocate)", steps, gen_tokens, {
        "reward_mean": float(np.mean([h["reward"] for h in hist[-a.steps:]]))})


# ---------------------------------------------------------------------- driver
def start_model(a) -> None:
    """Our SFT stage, once: a policy that sometimes solves the tasks (so groups have reward variance)."""
    if (Path(a.workdir) / "bench" / "sft" / "model" / "config.json").is_file():
        return
    cmd = [sys.executable, "-m", "stages.sft", "exp=bench", f"runs_dir={a.workdir}", f"model={a.model}",
           f"sft.max_steps={a.sft_steps}", "checkpoint.every_steps=0", "sft.val_every=100000"]
    with open(Path(a.workdir) / "sft.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=log)


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m bench.grpo")
    p.add_argument("--model", default="tiny", help="a configs/model/<name>.yaml to SFT from")
    p.add_argument("--sft-steps", type=int, default=960)  # the default SFT: rewards ~0.2, groups vary
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--max-new", type=int, default=48)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="runs/bench_grpo")
    p.add_argument("--only", choices=["ours", "trl"])
    p.add_argument("--child", choices=["ours", "trl"], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.warmup < 1 or a.steps < 1:
        p.error("--warmup and --steps must be at least 1")
    return a


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = parse(argv)
    if a.child:
        print(json.dumps((run_ours if a.child == "ours" else run_trl)(a)), flush=True)
        return 0
    Path(a.workdir).mkdir(parents=True, exist_ok=True)
    start_model(a)
    best = alternate("bench.grpo", argv, [a.only] if a.only else ["ours", "trl"], a.repeats, "step_s",
                     lower_is_better=True, head=common_args(a))
    if len(best) == 2:
        o, t = best["ours"], best["trl"]
        print(json.dumps({**common_args(a), "ratio_step_time_ours_over_trl": o["step_s"] / t["step_s"],
                          "ratio_gen_tokens_per_s_ours_over_trl": o["gen_tokens_per_s"] / t["gen_tokens_per_s"],
                          "refit_share_ours": o["refit_share"], "refit_share_trl": t["refit_share"]}))
    return 0 if len(best) == (1 if a.only else 2) else 1


if __name__ == "__main__":
    raise SystemExit(main())
