"""A minimal stage built only from the foundation pieces, to test them end to end.

It trains the tiny model on seeded random token batches. Not a product stage: SFT/RL stages
replace the batch source and the loss, and keep this exact shape.
"""
from dataclasses import dataclass, field

import torch

from common.distributed import full_optimizer_state, load_optimizer_state
from common.models import build_model, load_tokenizer
from stages.checkpoint import load_training_state, load_weights
from stages.run import StageRun, base_model_ref
from stages.schema import RunConfig


@dataclass
class ToyTrain:
    max_steps: int = 4
    lr: float = 1e-3
    batch: int = 2
    seq: int = 32


@dataclass
class ToyConfig(RunConfig):
    toy: ToyTrain = field(default_factory=ToyTrain)


class Crash(RuntimeError):
    pass


def batch_for(step: int, vocab: int, t: ToyTrain, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(4, vocab, (t.batch, t.seq), generator=gen)


def run_toy(cfg: ToyConfig, stage: str = "sft", parent: dict | None = None,
            crash_at_step: int = 0) -> StageRun:
    """crash_at_step > 0 raises after that step, like a kill (not part of the config on purpose)."""
    tok = load_tokenizer(cfg.model)
    model = build_model(cfg.model, tok)
    run = StageRun(stage, cfg).start(parent=parent or base_model_ref(cfg.model, model),
                                     total_steps=cfg.toy.max_steps)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.toy.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    gen = torch.Generator().manual_seed(cfg.seed)
    step = 0
    if run.resume_from:
        load_weights(model, run.resume_from)
        state, opt_state, sched_state = load_training_state(run.resume_from)
        load_optimizer_state(model, opt, opt_state)
        sched.load_state_dict(sched_state)
        step = state["step"]
        gen.set_state(torch.tensor(state["data"]["gen_state"], dtype=torch.uint8))
    try:
        while step < cfg.toy.max_steps:
            x = batch_for(step, len(tok), cfg.toy, gen)
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            opt.step(), sched.step(), opt.zero_grad()
            step += 1
            run.log(step, {"loss": loss.item(), "lr": sched.get_last_lr()[0]})
            if run.should_checkpoint(step):
                run.save_checkpoint(step, model, tok, optimizer_state=full_optimizer_state(model, opt),
                                    scheduler_state=sched.state_dict(),
                                    trainer_state={"data": {"gen_state": gen.get_state().tolist()}})
            if step == crash_at_step:
                raise Crash(f"simulated kill after step {step}")
    except BaseException as e:
        run.fail(e)
        raise
    run.finish(model, tok, {"final_loss": loss.item(), "steps": step},
               data=[{"source": "random-tokens", "sha256": None, "rows": step * cfg.toy.batch}])
    return run
