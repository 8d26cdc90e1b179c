"""Stage 1: packed-sequence SFT with role-based loss masking.

    python -m stages.sft [--config configs/sft.yaml] key=value ...     (or: make sft ARGS="...")

Recipe: setup (model, data, sequences) -> loop of optimizer steps (data -> forward/backward ->
optimizer step, timed) with periodic validation and checkpoints -> export + lineage -> cleanup.
"""
from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from common.distributed import Dist, full_model_state, full_optimizer_state, load_optimizer_state
from common.models import adamw, build_model, load_tokenizer, param_counts, resolve_device
from sft.batching import Sequence, make_batch, tokenize_rows
from sft.data import DataError, load_mixture
from sft.packing import STRATEGIES, efficiency, pack
from sft.trainer import SFTConfig, choose_attention, isolation_mode, lr_multiplier, train_step, validation_loss
from stages import checkpoint as ckpt
from stages.cli import UserError, main_for
from stages.lineage import data_record
from stages.metrics import read_metrics
from stages.run import StageRun, base_model_ref, builtin_data
from stages.schema import RunConfig

log = logging.getLogger("stages.sft")


@dataclass
class SFTStageConfig(RunConfig):
    sft: SFTConfig = field(default_factory=SFTConfig)


class PackStream:
    """Bins of sequence indices, epoch after epoch; its position is the resume state."""

    def __init__(self, seqs: list[Sequence], cfg: SFTConfig, seed: int, mode: str = "packed"):
        self.seqs, self.cfg, self.seed, self.rows = seqs, cfg, seed, mode == "rows"
        self.lengths = [len(s.input_ids) for s in seqs]
        self.epoch, self.next_bin = 0, 0
        self._bins: list[list[int]] | None = None
        self.stats: dict = {}

    def _epoch_bins(self) -> list[list[int]]:
        res = pack(self.lengths, self.cfg.pack_size, self.cfg.packing, seed=self.seed + self.epoch,
                   truncate=self.cfg.truncate_long)
        if not res.bins:
            raise UserError(f"sft.pack_size={self.cfg.pack_size}: every sequence is longer; nothing to train")
        self.stats = {"packing_efficiency_epoch": efficiency(res, self.lengths, self.cfg.pack_size, rows=self.rows),
                      "dropped_too_long": len(res.dropped), "truncated": len(res.truncated)}
        bins = res.bins[:]
        random.Random(self.seed + self.epoch).shuffle(bins)
        return bins

    def take(self, n: int) -> list[list[Sequence]]:
        out = []
        while len(out) < n:
            if self._bins is None:
                self._bins = self._epoch_bins()
            if self.next_bin >= len(self._bins):
                self.epoch, self.next_bin, self._bins = self.epoch + 1, 0, None
                continue
            out.append([self.seqs[i] for i in self._bins[self.next_bin]])
            self.next_bin += 1
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "next_bin": self.next_bin}

    def restore(self, state: dict) -> None:
        self.epoch, self.next_bin, self._bins = state["epoch"], state["next_bin"], None


def micro_batches(packs: list[list[Sequence]], cfg: SFTConfig, mode: str, pad_id: int) -> list[dict]:
    """One micro-batch per `micro_batch_packs` packs (in rows mode a pack's conversations are rows)."""
    groups = [packs[i: i + cfg.micro_batch_packs] for i in range(0, len(packs), cfg.micro_batch_packs)]
    if mode == "packed":
        return [{k: torch.cat([make_batch(p, mode, cfg.pack_size, pad_id)[k] for p in g])
                 for k in ("input_ids", "loss_mask", "position_ids")} for g in groups]
    return [make_batch([s for p in g for s in p], mode, cfg.pack_size, pad_id) for g in groups]


def step_metrics(packs: list[list[Sequence]], batches: list[dict], cfg: SFTConfig) -> dict:
    real = sum(len(s.input_ids) for p in packs for s in p)
    trained = sum(sum(s.loss_mask) for p in packs for s in p)
    slots = sum(b["input_ids"].numel() for b in batches)
    return {"real_tokens": real, "packing_efficiency": real / (len(packs) * cfg.pack_size),
            "pad_fraction": 1 - real / slots, "masked_fraction": 1 - trained / max(real, 1)}


def start_run(run_: StageRun, dist: Dist, parent: dict, total_steps: int) -> str | None:
    """Rank 0 prepares the run dir; every rank learns the resume checkpoint (or rank 0's error)."""
    outcome = None
    if dist.is_main:
        try:
            run_.start(parent=parent, total_steps=total_steps)
            outcome = ("ok", str(run_.resume_from) if run_.resume_from else None)
        except Exception as e:  # noqa: BLE001 - re-raised on every rank below
            outcome = ("error", e)
    outcome = dist.broadcast(outcome)
    if outcome[0] == "error":
        raise outcome[1]
    return outcome[1]


def run(cfg: SFTStageConfig, stage: str = "sft") -> dict | None:
    """`stage` names the run dir (runs/<exp>/<stage>); the GenRM stage's warm start runs this too."""
    s = cfg.sft
    # ---------------------------------------------------------------- setup
    dist = Dist.from_env()
    device = dist.device(resolve_device(cfg.model.device))
    if dist.active and cfg.model.lora.enabled:
        raise UserError("model.lora.enabled with more than one process is not supported yet; use one process")
    if s.packing not in STRATEGIES:
        raise UserError(f"sft.packing={s.packing!r}: one of {', '.join(STRATEGIES)}")
    if s.packs_per_step % dist.world:
        raise UserError(f"sft.packs_per_step={s.packs_per_step} must be a multiple of the {dist.world} processes")
    tok = load_tokenizer(cfg.model)
    model = build_model(cfg.model, tok, device)
    parent = base_model_ref(cfg.model, model)
    mode = isolation_mode(s.attention_isolation, model)
    attention = choose_attention(model, mode, device)
    why = " (one conversation per row: Mamba layers have no sequence-aware scan here)" if mode == "rows" else ""
    log.info("model %s on %s x%d; attention isolation: %s%s; attention: %s", param_counts(model), device, dist.world,
             mode, why, attention)
    data_dir = Path(cfg.runs_dir) / cfg.exp / "data"
    if dist.is_main:  # generate built-in data once, before the other ranks read it
        for src in s.data.sources:
            builtin_data(src.path, data_dir, cfg.seed)
    dist.barrier()
    sources = [replace(src, path=builtin_data(src.path, data_dir, cfg.seed)) for src in s.data.sources]
    try:
        data = load_mixture(replace(s.data, sources=sources), cfg.seed)
        train_seqs, aug = tokenize_rows(tok, data.train, augment=s.augment, seed=cfg.seed,
                                        skip_malformed=s.data.skip_malformed)
        val_seqs, _ = tokenize_rows(tok, data.val, skip_malformed=s.data.skip_malformed)
    except DataError as e:
        raise UserError(str(e)) from None
    stream = PackStream(train_seqs, s, cfg.seed, mode)
    val_bins = pack([len(v.input_ids) for v in val_seqs], s.pack_size, s.packing, truncate=s.truncate_long).bins
    val_batches = micro_batches([[val_seqs[i] for i in b] for b in val_bins], s, mode, tok.pad_token_id)
    log.info("data: %d train rows -> %d sequences, %d val sequences, %d malformed skipped, augment %s",
             len(data.train), len(train_seqs), len(val_seqs), data.skipped + aug["skipped"], aug)

    run_ = StageRun(stage, cfg)
    resume_from = start_run(run_, dist, parent, s.max_steps)
    if resume_from:
        ckpt.load_weights(model, Path(resume_from))  # before sharding: a plain HF model
    model = dist.shard(model)
    optimizer = adamw(model, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_multiplier(i, s))
    step = 0
    if resume_from:
        state, opt_state, sched_state = ckpt.load_training_state(Path(resume_from))
        load_optimizer_state(model, optimizer, opt_state)
        scheduler.load_state_dict(sched_state)
        step = state["step"]
        stream.restore(state["data"])
    model.train()
    reduce_sum = dist.reduce_sum if dist.active else None

    # ---------------------------------------------------------------- train loop
    val_loss = None
    metrics: dict = {}
    try:
        while step < s.max_steps:
            t0 = time.perf_counter()
            packs = stream.take(s.packs_per_step)
            batches = micro_batches(packs[dist.rank::dist.world], s, mode, tok.pad_token_id)
            t1 = time.perf_counter()
            out = train_step(model, batches, optimizer, scheduler, grad_clip=s.grad_clip, device=device,
                             reduce_sum=reduce_sum)
            t2 = time.perf_counter()
            step += 1
            metrics = {**out, "lr": scheduler.get_last_lr()[0], **step_metrics(packs, batches, s),
                       "epoch": stream.epoch, **stream.stats, "time/data_s": t1 - t0, "time/train_s": t2 - t1}
            metrics["tokens_per_s"] = metrics["real_tokens"] / (t2 - t0)
            if val_batches and (step % s.val_every == 0 or step == s.max_steps):
                val_loss = metrics["val_loss"] = validation_loss(model, val_batches, device)
            if dist.is_main:
                run_.log(step, metrics)
            if run_.should_checkpoint(step) and step < s.max_steps:
                save_state(run_, dist, step, model, tok, optimizer, scheduler, stream)
    except BaseException as e:
        if dist.is_main:
            run_.fail(e)
        raise

    # ---------------------------------------------------------------- save + cleanup
    final_state = full_model_state(model) if dist.active else None
    record = None
    if dist.is_main:
        first_loss = read_metrics(run_.metrics_path)[0]["loss"] if step else None
        summary = {"steps": step, "final_loss": metrics.get("loss"), "first_loss": first_loss,
                   "val_loss": val_loss, "packing_efficiency": stream.stats.get("packing_efficiency_epoch"),
                   "dropped_too_long": stream.stats.get("dropped_too_long"), "attention_isolation": mode,
                   "malformed_skipped": data.skipped + aug["skipped"], "world_size": dist.world}
        sources = [data_record(p["source"], p["rows"], Path(p["source"])) for p in data.per_source]
        record = run_.finish(model, tok, summary, sources, model_state=final_state)
        log.info("%s finished: %s", stage, json.dumps(summary))
    dist.barrier()
    dist.shutdown()
    return record


def save_state(run_: StageRun, dist: Dist, step: int, model, tok, optimizer, scheduler, stream) -> None:
    """Gather (collective under FSDP) and let rank 0 write the checkpoint."""
    model_state = full_model_state(model) if dist.active else None
    optim_state = full_optimizer_state(model, optimizer)
    if dist.is_main:
        run_.save_checkpoint(step, model, tok, optimizer_state=optim_state, scheduler_state=scheduler.state_dict(),
                             model_state=model_state, trainer_state={"data": stream.state()})
    dist.barrier()


def main(argv: list[str] | None = None) -> int:
    return main_for(SFTStageConfig, "configs/sft.yaml", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
