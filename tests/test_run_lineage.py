"""Stage runs end to end on the foundation: run dir layout, resume, lineage and parent checks."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from stages import lineage
from stages.config import ConfigError, load_config
from stages.lineage import LineageError, resolve_parent
from stages.metrics import read_metrics
from stages.run import AlreadyFinished
from tests.toy_stage import Crash, ToyConfig, run_toy


def toy_cfg(tmp_path, *extra):
    return load_config(ToyConfig, None, ["model=tiny_llama", f"runs_dir={tmp_path}", "exp=t",
                                         "logging.progress_bar=false", "checkpoint.every_steps=2",
                                         *extra])


def test_stage_dir_layout_and_lineage_record(tmp_path):
    run = run_toy(toy_cfg(tmp_path))
    d = tmp_path / "t" / "sft"
    assert run.dir == d
    for name in ("config.yaml", "metrics.jsonl", "lineage.json", "checkpoints", "model"):
        assert (d / name).exists(), name
    rows = read_metrics(d / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all("loss" in r for r in rows)
    rec = json.loads((d / "lineage.json").read_text())
    for key in ("stage", "run_id", "parent", "model_sha256", "config_sha256", "data", "git_commit",
                "started_at", "finished_at", "metrics", "versions", "tokenizer_sha256"):
        assert key in rec, key
    assert rec["status"] == "finished" and rec["stage"] == "sft"
    assert rec["parent"]["stage"] == "base" and rec["parent"]["source"].startswith("embedded:llama")
    assert rec["model_sha256"] == lineage.weights_sha256(d / "model")
    assert set(rec["versions"]) >= {"python", "torch", "transformers", "vllm", "ray", "peft"}
    assert rec["data"][0]["rows"] == 8 and rec["metrics"]["steps"] == 4
    assert load_config(ToyConfig, d / "config.yaml") == run.cfg  # saved config reloads exactly
    AutoModelForCausalLM.from_pretrained(d / "model")


def test_killed_run_resumes_and_matches_uninterrupted(tmp_path):
    ref = run_toy(toy_cfg(tmp_path / "a"))
    with pytest.raises(Crash):
        run_toy(toy_cfg(tmp_path / "b"), crash_at_step=3)
    d = tmp_path / "b" / "t" / "sft"
    assert lineage.read(d)["status"] == "failed"
    assert [r["step"] for r in read_metrics(d / "metrics.jsonl")] == [1, 2, 3]
    # A changed config cannot silently continue a run...
    with pytest.raises(ConfigError, match="differs from the one this unfinished run started with"):
        run_toy(toy_cfg(tmp_path / "b", "toy.lr=0.5"))
    # ...the same command resumes from the step-2 checkpoint.
    resumed = run_toy(toy_cfg(tmp_path / "b"))
    rec = lineage.read(d)
    assert rec["status"] == "finished" and rec["resumed_from_steps"] == [2]
    assert rec["run_id"] == resumed.record["run_id"]
    assert [r["step"] for r in read_metrics(d / "metrics.jsonl")] == [1, 2, 3, 4]  # step 3 not doubled
    a = AutoModelForCausalLM.from_pretrained(ref.model_dir).state_dict()
    b = AutoModelForCausalLM.from_pretrained(resumed.model_dir).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = read_metrics(ref.metrics_path), read_metrics(resumed.metrics_path)
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb]


def test_finished_run_is_not_redone_unless_overwrite(tmp_path):
    run_toy(toy_cfg(tmp_path))
    with pytest.raises(AlreadyFinished):
        run_toy(toy_cfg(tmp_path))
    with pytest.raises(ConfigError, match="different config"):
        run_toy(toy_cfg(tmp_path, "toy.lr=0.01"))
    again = run_toy(toy_cfg(tmp_path, "toy.lr=0.01", "overwrite=true"))
    assert again.record["status"] == "finished"


def test_child_refuses_missing_unfinished_or_tampered_parent(tmp_path):
    exp = tmp_path / "t"
    with pytest.raises(LineageError, match="has not run.*make sft"):
        resolve_parent(exp / "sft", expect_stage="sft")
    with pytest.raises(Crash):
        run_toy(toy_cfg(tmp_path), crash_at_step=1)
    with pytest.raises(LineageError, match="did not finish"):
        resolve_parent(exp / "sft", expect_stage="sft")
    run_toy(toy_cfg(tmp_path, "overwrite=true"))
    ref = resolve_parent(exp / "sft", expect_stage="sft")
    assert ref["stage"] == "sft" and ref["model_sha256"] == lineage.read(exp / "sft")["model_sha256"]
    with pytest.raises(LineageError, match="expected 'rlvr'"):
        resolve_parent(exp / "sft", expect_stage="rlvr")
    child = run_toy(toy_cfg(tmp_path), stage="rlvr", parent=ref)
    assert child.record["parent"]["run_id"] == ref["run_id"]
    weights = exp / "sft" / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # flip bits in one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(LineageError, match="modified after export"):
        resolve_parent(exp / "sft", expect_stage="sft")
    assert lineage.main(["verify", str(exp)]) == 1
    with pytest.raises(LineageError, match="different tokenizer"):
        lineage.check_tokenizer(ref, "0" * 64)


def test_lineage_cli(tmp_path, capsys):
    run_toy(toy_cfg(tmp_path))
    assert lineage.main(["verify", str(tmp_path / "t")]) == 0
    assert lineage.main(["show", str(tmp_path / "t")]) == 0
    out = capsys.readouterr().out
    assert "sft" in out and "status=finished" in out
    assert lineage.main(["bogus"]) == 2


def test_a_stage_refuses_a_parent_from_another_experiment_with_another_tokenizer(tmp_path, capsys):
    from stages import rlvr

    run_toy(toy_cfg(tmp_path))  # experiment t
    run_toy(toy_cfg(tmp_path, "exp=other"))
    rec = lineage.read(tmp_path / "other" / "sft")
    same = [f"runs_dir={tmp_path}", "exp=t", f"parent={tmp_path / 'other' / 'sft'}"]
    lineage.check_experiment_tokenizer(resolve_parent(tmp_path / "other" / "sft"), tmp_path / "t")  # same: fine
    rec["tokenizer_sha256"] = "f" * 64  # as if trained with another tokenizer or chat template
    lineage.write(tmp_path / "other" / "sft", rec)
    assert rlvr.main(same) == 2
    err = capsys.readouterr().err
    assert "differs from this experiment's sft stage" in err and "refusing" in err
    assert not (tmp_path / "t" / "rlvr").exists()  # refused before any work
