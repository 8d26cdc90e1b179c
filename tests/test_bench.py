"""bench/ scripts: one JSON line per measured run and a ratio line, the peer (TRL) measured beside us."""
import json

import pytest

from bench import packing


def test_packing_bench_prints_json_lines(capsys):
    assert packing.main(["--n", "3000", "--pack-size", "1024"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    ours = next(r for r in rows if r.get("packer") == "nano-posttrain ffd")
    assert ours["efficiency"] > 0.99 and ours["packs"] > 0 and ours["tokens"] == sum(
        packing.lognormal_lengths(3000, 1024, 0))
    assert any("trl" in str(r.get("packer")) for r in rows)  # measured, or reported as skipped


def _json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_sft_bench_measures_both_trainers_on_the_same_tokens(capsys):
    from bench import sft

    assert sft.main(["--seq", "256", "--packs", "2", "--steps", "2", "--warmup", "1", "--repeats", "1"]) == 0
    rows = _json_lines(capsys.readouterr().out)
    ours = next(r for r in rows if r.get("trainer") == "nano-posttrain")
    trl = next(r for r in rows if str(r.get("trainer")).startswith("trl"))
    assert ours["attention"] == "packed_sdpa" and ours["steps_timed"] == trl["steps_timed"] == 2
    for r in (ours, trl):
        assert r["tokens_per_s"] > 0 and r["peak_rss_gib"] > 0
        assert 0.8 * 2 * 256 < r["real_tokens_per_step"] <= 2 * 256  # two packed rows of 256 per step
    # same seeded model and tokens: the first losses agree (each side's first batch differs)
    assert abs(ours["first_loss"] - trl["first_loss"]) < 0.1
    assert rows[-1]["ratio_tokens_per_s_ours_over_trl"] == pytest.approx(ours["tokens_per_s"] / trl["tokens_per_s"])


@pytest.mark.slow
def test_grpo_bench_times_every_phase_of_both_trainers(tmp_path, capsys):
    from bench import grpo

    argv = ["--workdir", str(tmp_path), "--sft-steps", "20", "--prompts", "4", "--group", "4", "--max-new", "16",
            "--steps", "1", "--warmup", "1"]
    assert grpo.main(argv) == 0
    rows = _json_lines(capsys.readouterr().out)
    assert not [r for r in rows if "error" in r], rows
    ours, trl = rows[0], rows[1]
    assert ours["trainer"] == "nano-posttrain rlvr" and trl["trainer"].startswith("trl")
    for r in (ours, trl):
        phases = sum(r[f"{p}_s"] for p in grpo.PHASES)
        assert r["step_s"] > 0 and phases == pytest.approx(r["step_s"], rel=1e-6)  # the phases cover the step
        assert r["generate_s"] > 0 and r["refit_s"] > 0 and r["gen_tokens_per_s"] > 0
    assert ours["logprobs_s"] < 0.01  # folded into the update (no reference model)
    assert "ratio_step_time_ours_over_trl" in rows[2]


@pytest.mark.gpu
def test_sft_bench_on_gpu_reports_mfu_and_memory(capsys):
    from bench import sft

    assert sft.main(["--model", "qwen3_0p5b", "--seq", "2048", "--packs", "2", "--steps", "2", "--warmup", "1",
                     "--repeats", "1", "--only", "ours"]) == 0
    r = _json_lines(capsys.readouterr().out)[0]
    assert 0 < r["mfu"] < 1 and r["peak_mem_gib"] > 1 and r["tokens_per_s"] > 0


@pytest.mark.gpu
def test_hf_rollout_bench_on_gpu(tmp_path, capsys):
    from bench import rollout

    assert rollout.main(["--workdir", str(tmp_path), "--model", "qwen3_0p5b", "--backends", "hf", "--max-new", "32",
                         "--batches", "1"]) == 0
    r = _json_lines(capsys.readouterr().out)[0]
    assert r["gen_tokens_per_s"] > 0 and r["device"] != "cpu"


def test_rollout_bench_runs_both_backends_on_the_same_batch(tmp_path, capsys):
    from bench import rollout

    argv = ["--workdir", str(tmp_path), "--prompts", "2", "--group", "2", "--max-new", "8", "--batches", "1"]
    assert rollout.main(argv) == 0
    rows = _json_lines(capsys.readouterr().out)
    hf, vllm = (next(r for r in rows if r.get("trainer") == b) for b in ("hf", "vllm"))
    for r in (hf, vllm):
        assert r["gen_tokens_per_s"] > 0 and 1 <= r["mean_response_tokens"] <= 8
    assert rows[-1]["ratio_gen_tokens_per_s_vllm_over_hf"] == pytest.approx(
        vllm["gen_tokens_per_s"] / hf["gen_tokens_per_s"])
