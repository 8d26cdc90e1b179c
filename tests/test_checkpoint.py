"""Checkpoints: atomic save (a crash mid-save keeps the previous one), keep-last-K, state round trip."""
import json
import random

import numpy as np
import pytest
import torch

from common.distributed import full_optimizer_state, load_optimizer_state
from common.models import build_model, load_tokenizer
from stages import checkpoint as ckpt
from stages.config import load_config
from stages.schema import RunConfig


@pytest.fixture(scope="module")
def tiny():
    cfg = load_config(RunConfig, None, ["model=tiny_llama"]).model
    tok = load_tokenizer(cfg)
    return build_model(cfg, tok), tok


def _opt(model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x = torch.randint(0, 100, (1, 8))
    model(input_ids=x, labels=x).loss.backward()
    opt.step(), sched.step(), opt.zero_grad()
    return opt, sched


def test_state_round_trip(tiny, tmp_path):
    model, tok = tiny
    opt, sched = _opt(model)
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    path = ckpt.save_checkpoint(tmp_path, 7, model, tok, optimizer_state=full_optimizer_state(model, opt),
                                scheduler_state=sched.state_dict(), trainer_state={"data": {"epoch": 2, "index": 33}})
    want = (random.random(), np.random.rand(), torch.rand(1).item())
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    assert (path / "chat_template.jinja").is_file() and (path / "config.json").is_file()
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)
    state, opt_state, sched_state = ckpt.load_training_state(path)
    load_optimizer_state(model, opt2, opt_state)
    sched2.load_state_dict(sched_state)
    assert state == {"step": 7, "data": {"epoch": 2, "index": 33}}
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == want
    assert sched2.get_last_lr() == sched.get_last_lr()
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k]["exp_avg"], s2[k]["exp_avg"]) for k in s1)


def test_crash_mid_save_keeps_previous_checkpoint(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    ckpt.save_checkpoint(tmp_path, 1, model, tok)

    def dies_halfway(model, tokenizer, out, state_dict=None):
        (out / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(ckpt, "save_pretrained", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 2, model, tok)
    assert ckpt.latest_checkpoint(tmp_path).name == "step_1"
    assert not (tmp_path / "step_2").exists()
    # A hard kill leaves its temp dir (and possibly a step dir without state) behind: both are
    # ignored as checkpoints and swept on the next start.
    (tmp_path / ".tmp-step_3-deadbeef").mkdir()
    (tmp_path / "step_4").mkdir()
    (tmp_path / "step_4" / "model.safetensors").write_bytes(b"partial")
    assert ckpt.latest_checkpoint(tmp_path).name == "step_1"
    swept = {p.name for p in ckpt.sweep_incomplete(tmp_path)}
    assert swept == {".tmp-step_3-deadbeef", "step_4"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_1"]


def test_keep_last_and_resave_same_step(tiny, tmp_path):
    model, tok = tiny
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(tmp_path, step, model, tok, keep_last=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [3, 4]
    ckpt.save_checkpoint(tmp_path, 4, model, tok, keep_last=2, trainer_state={"again": True})
    assert json.loads((tmp_path / "step_4" / "trainer_state.json").read_text())["again"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_3", "step_4"]


@pytest.mark.parametrize("preset", ["tiny_llama", "tiny"])  # tiny: Nemotron-H saves renamed keys
def test_load_weights_round_trip(preset, tmp_path):
    cfg = load_config(RunConfig, None, [f"model={preset}"]).model
    tok = load_tokenizer(cfg)
    model = build_model(cfg, tok)
    path = ckpt.save_checkpoint(tmp_path, 1, model, tok)
    other = build_model(load_config(RunConfig, None, [f"model={preset}", "model.init_seed=5"]).model, tok)
    assert not torch.equal(next(other.parameters()), next(model.parameters()))
    ckpt.load_weights(other, path)
    for (n, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), n
    wrong = build_model(load_config(RunConfig, None, ["model=tiny_qwen3"]).model, tok)
    with pytest.raises(RuntimeError, match="does not match the model"):
        ckpt.load_weights(wrong, path)
