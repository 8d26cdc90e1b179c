"""Checkpoints: Hugging Face format weights + tokenizer, with the state to resume exactly beside them.

    checkpoints/step_<N>/
        model.safetensors, config.json, generation_config.json   (or adapter_* for LoRA)
        tokenizer.json, tokenizer_config.json, chat_template.jinja
        optimizer.pt      optimizer + LR scheduler state
        rng.pt            python / numpy / torch (+cuda) RNG states
        trainer_state.json  step, data position, anything else the stage needs  (written last)

Every directory is written under a temporary name and renamed into place, so a crash mid-save
leaves the previous checkpoint as the newest complete one; leftovers are swept on the next start.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

STEP_DIR = re.compile(r"^step_(\d+)$")
TMP_PREFIX = ".tmp-"
STATE_FILE = "trainer_state.json"


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp dir beside `final`; on success it replaces `final` in one rename."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        if final.exists():  # replace: move the old one aside first so a crash never leaves neither
            old = final.parent / f"{TMP_PREFIX}old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def save_pretrained(model, tokenizer, out: Path, state_dict: dict | None = None) -> None:
    """HF-format weights (safetensors) + tokenizer + chat template + generation config.

    `state_dict`: the full weights when `model` is sharded (gathered by the caller).
    """
    model.save_pretrained(str(out), safe_serialization=True, state_dict=state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))


def capture_rng() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(root: Path, step: int, model, tokenizer, *, optimizer_state: dict | None = None,
                    scheduler_state: dict | None = None, trainer_state: dict | None = None, keep_last: int = 2,
                    model_state: dict | None = None) -> Path:
    """Write checkpoints/step_<step> atomically, then drop all but the newest `keep_last`.

    `optimizer_state` is saved as given (common.distributed.full_optimizer_state: parameter-name
    keyed, so it resumes under any world size).
    """
    final = Path(root) / f"step_{step}"
    with atomic_dir(final) as tmp:
        save_pretrained(model, tokenizer, tmp, state_dict=model_state)
        opt_state = {"optimizer": optimizer_state, "scheduler": scheduler_state}
        torch.save(opt_state, tmp / "optimizer.pt")
        torch.save(capture_rng(), tmp / "rng.pt")
        # Written last: a step dir without it was never complete (defence in depth beside the rename).
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, **(trainer_state or {})}, indent=2))
    prune_checkpoints(root, keep_last)
    return final


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = STEP_DIR.match(p.name)
        if m and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1][1] if ckpts else None


def sweep_incomplete(root: Path) -> list[Path]:
    """Remove temp dirs and step dirs without a state file (a save that died midway)."""
    root = Path(root)
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            incomplete = STEP_DIR.match(p.name) and not (p / STATE_FILE).is_file()
            if p.name.startswith(TMP_PREFIX) or incomplete:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def prune_checkpoints(root: Path, keep_last: int) -> None:
    if keep_last <= 0:
        return
    for _, p in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(p, ignore_errors=True)


def load_training_state(ckpt: Path) -> tuple[dict, dict | None, dict | None]:
    """Restore the RNG from a checkpoint; return (trainer_state.json, optimizer state, scheduler state).

    The caller applies the optimizer state (common.distributed.load_optimizer_state), the scheduler
    state, and loads the weights with load_weights (plain HF format).
    """
    ckpt = Path(ckpt)
    opt_state = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=False)
    restore_rng(torch.load(ckpt / "rng.pt", map_location="cpu", weights_only=False))
    return json.loads((ckpt / STATE_FILE).read_text()), opt_state["optimizer"], opt_state["scheduler"]


def load_weights(model, ckpt: Path) -> None:
    """Load a checkpoint's weights into an already-built model (plain HF or peft LoRA).

    Plain models go through `from_pretrained`, because transformers may store weights under the
    architecture's original checkpoint names (Nemotron-H saves `backbone.*`) and converts on load.
    """
    from common.models import is_lora

    ckpt = Path(ckpt)
    if is_lora(model):
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(str(ckpt / "adapter_model.safetensors")))
        return
    from transformers import AutoModelForCausalLM

    source = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=next(model.parameters()).dtype)
    try:
        model.load_state_dict(source.state_dict(), strict=True)
    except RuntimeError as e:
        raise RuntimeError(f"{ckpt}: checkpoint does not match the model ({str(e).splitlines()[0]})") from None
