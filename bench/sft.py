"""SFT throughput: our SFT step (stages/sft.py's data path + sft/trainer.train_step) vs TRL's
`SFTTrainer` (BFD packing, padding-free) on the same model config, sequences, pack length and batch,
in one script run. Prints one JSON line per measured run, then one with the ratios.

    python -m bench.sft [--model tiny_qwen3] [--seq 1024] [--packs 4] [--micro 1] [--steps 8]
                        [--warmup 2] [--repeats 2] [--only ours|trl]          (make bench-sft)

Each run is a child process (so peak memory is its own), alternated ours/TRL `--repeats` times; the
ratio uses each side's best run. Both sides get the same token sequences (log-normal lengths, a
prompt share masked from the loss), the same seeded model, AdamW (fused, lr 1e-5, betas 0.9/0.95,
clip 1.0, constant LR), `--packs` packs of `--seq` tokens per optimizer step in micro-batches of
`--micro` packs. Tokens/s counts real (unpadded) tokens between the end of the last warm-up step
and the end of the last step. MFU only on CUDA (6N + attention FLOPs per token / bf16 peak).
Models with Mamba layers train one conversation per row on both sides (TRL without packing):
packed rows would leak Mamba state across conversations.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time

import numpy as np
import torch

from bench import alternate

BF16_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12}  # dense bf16 (SXM); MFU only on GPUs listed here


def sequences(n_tokens: int, seq: int, vocab: int, seed: int):
    """Random-token conversations: log-normal lengths (median seq/8) until `n_tokens`; the first
    10-60% of each (the "prompt") is masked from the loss."""
    from sft.batching import Sequence

    rng = np.random.default_rng(seed)
    out, total = [], 0
    while total < n_tokens:
        n = int(np.clip(rng.lognormal(np.log(seq / 8), 1.0), 16, seq))
        p = int(n * rng.uniform(0.1, 0.6))
        out.append(Sequence(rng.integers(3, vocab, n).tolist(), [0] * p + [1] * (n - p)))
        total += n
    return out


def load(args):
    from common.models import build_model, load_tokenizer, resolve_device
    from stages.config import load_config
    from stages.sft import SFTStageConfig

    cfg = load_config(SFTStageConfig, "configs/sft.yaml", [
        f"model={args.model}", f"sft.pack_size={args.seq}", f"sft.packs_per_step={args.packs}",
        f"sft.micro_batch_packs={args.micro}", "sft.lr=1e-5", "sft.schedule=constant", "sft.warmup_steps=0",
        f"sft.max_steps={args.warmup + args.steps}"])
    device = resolve_device(cfg.model.device)
    tok = load_tokenizer(cfg.model)
    model = build_model(cfg.model, tok, device)
    vocab = model.get_input_embeddings().num_embeddings
    need = int((args.warmup + args.steps) * args.packs * args.seq * 1.05)
    return cfg, tok, model, device, sequences(need, args.seq, vocab, args.seed)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_flops_per_token(model, seqs) -> float:
    """6 x (params - input embedding) + causal attention (6 x n^2 x heads x head_dim per layer per
    conversation, averaged over tokens): the usual MFU numerator."""
    c = model.config
    n = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    if getattr(c, "tie_word_embeddings", False):
        n += model.get_input_embeddings().weight.numel()
    kinds = getattr(c, "layers_block_type", None)
    attn_layers = sum(k in ("attention", "full_attention") for k in kinds) if kinds else c.num_hidden_layers
    width = c.num_attention_heads * getattr(c, "head_dim", c.hidden_size // c.num_attention_heads)
    lens = np.array([len(s.input_ids) for s in seqs], dtype=np.float64)
    attn = 6 * attn_layers * width * float((lens ** 2).sum() / lens.sum())
    return 6 * n + attn


def run_ours(args) -> dict:
    from common.models import adamw
    from sft.trainer import choose_attention, isolation_mode, train_step
    from stages.sft import PackStream, micro_batches

    cfg, tok, model, device, seqs = load(args)
    s = cfg.sft
    mode = isolation_mode(s.attention_isolation, model)
    attention = choose_attention(model, mode, device)
    stream = PackStream(seqs, s, args.seed, mode)
    optimizer = adamw(model, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0)
    model.train()
    ends, tokens, losses = [], [], []
    sync(device)
    for _ in range(args.warmup + args.steps):
        packs = stream.take(s.packs_per_step)
        batches = micro_batches(packs, s, mode, tok.pad_token_id)
        out = train_step(model, batches, optimizer, scheduler, grad_clip=s.grad_clip, device=device)
        sync(device)
        ends.append(time.perf_counter())
        tokens.append(sum(len(q.input_ids) for p in packs for q in p))
        losses.append(out["loss"])
    return summarize(args, "nano-posttrain", model, seqs, device, ends, tokens, losses,
                     {"layout": mode, "attention": attention,
                      "packing_efficiency": stream.stats.get("packing_efficiency_epoch")})


def run_trl(args) -> dict:
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from sft.trainer import uses_mamba

    cfg, tok, model, device, seqs = load(args)
    s = cfg.sft
    rows = uses_mamba(model)  # TRL's padding-free rows would leak Mamba state: pad instead
    per_pack = len(seqs) / max(1, sum(len(q.input_ids) for q in seqs) / args.seq)
    ds = Dataset.from_dict({"input_ids": [q.input_ids for q in seqs], "assistant_masks": [q.loss_mask for q in seqs]})
    ends, tokens = [], []

    class Clock(TrainerCallback):
        def on_step_end(self, *_a, **_k):
            sync(device)
            ends.append(time.perf_counter())
            tokens.append(trainer._total_train_tokens)

    with tempfile.TemporaryDirectory() as out:
        targs = SFTConfig(
            output_dir=out, max_steps=args.warmup + args.steps, learning_rate=s.lr, lr_scheduler_type="constant",
            warmup_steps=0, weight_decay=s.weight_decay, adam_beta1=s.betas[0], adam_beta2=s.betas[1],
            max_grad_norm=s.grad_clip, max_length=args.seq, packing=not rows, padding_free=not rows,
            per_device_train_batch_size=round(per_pack * args.micro) if rows else args.micro,
            gradient_accumulation_steps=args.packs // args.micro, bf16=device.type == "cuda",
            use_cpu=device.type == "cpu", save_strategy="no", report_to=[], logging_steps=1, disable_tqdm=True,
            dataloader_num_workers=0, seed=args.seed, shuffle_dataset=True)
        trainer = SFTTrainer(model=model, args=targs, train_dataset=ds, processing_class=tok, callbacks=[Clock()])
        trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    per_step = np.diff([0] + tokens).tolist()
    return summarize(args, f"trl {trl.__version__} SFTTrainer", model, seqs, device, ends, per_step, losses,
                     {"layout": "padded rows" if rows else "bfd packing, padding-free"})


def summarize(args, who, model, seqs, device, ends, tokens, losses, extra) -> dict:
    w = args.warmup
    seconds = ends[-1] - ends[w - 1] if w else None
    real = sum(tokens[w:])
    r = {"bench": "sft", "trainer": who, "model": args.model, "seq": args.seq, "packs_per_step": args.packs,
         "micro_batch_packs": args.micro, "steps_timed": len(ends) - w, "device": device_name(device),
         "tokens_per_s": real / seconds if seconds else None, "step_s": seconds / (len(ends) - w) if seconds else None,
         "real_tokens_per_step": real / max(len(ends) - w, 1), "first_loss": losses[0] if losses else None,
         "last_loss": losses[-1] if losses else None, **extra,
         "params": sum(p.numel() for p in model.parameters()), "torch": torch.__version__}
    if device.type == "cuda":
        r["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        peak = next((v for k, v in BF16_PEAK_FLOPS.items() if k in r["device"]), None)
        if seconds and peak:
            r["mfu"] = train_flops_per_token(model, seqs) * r["tokens_per_s"] / peak
    else:
        r["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return r


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m bench.sft")
    p.add_argument("--model", default="tiny_qwen3", help="a configs/model/<name>.yaml")
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--packs", type=int, default=4, help="packs per optimizer step")
    p.add_argument("--micro", type=int, default=1, help="packs per forward pass")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=["ours", "trl"])
    p.add_argument("--child", choices=["ours", "trl"], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.packs % a.micro or a.warmup < 1:
        p.error("--packs must be a multiple of --micro, and --warmup at least 1")
    return a


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.child:
        print(json.dumps((run_ours if args.child == "ours" else run_trl)(args)), flush=True)
        return 0
    best = alternate("bench.sft", argv, [args.only] if args.only else ["ours", "trl"], args.repeats,
                     "tokens_per_s", lower_is_better=False, head={"bench": "sft", "model": args.model})
    if len(best) == 2:
        o, t = best["ours"], best["trl"]
        mem = "peak_mem_gib" if "peak_mem_gib" in o else "peak_rss_gib"
        print(json.dumps({"bench": "sft", "model": args.model, "ratio_tokens_per_s_ours_over_trl":
                          o["tokens_per_s"] / t["tokens_per_s"], f"ratio_{mem}_ours_over_trl": o[mem] / t[mem]}))
    return 0 if len(best) == (1 if args.only else 2) else 1


if __name__ == "__main__":
    raise SystemExit(main())
