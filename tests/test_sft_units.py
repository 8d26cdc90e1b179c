"""SFT pure pieces: packing invariants and efficiency, exact packed loss, masks, schedules, data."""
import json
import random

import pytest
import torch

from common.losses import masked_nll_sum
from common.models import build_model, load_tokenizer, takes_logits_to_keep
from common.synthetic import sft_rows
from sft.batching import make_batch, model_inputs, tokenize_rows
from sft.data import DataError, DataSource, SFTDataConfig, load_mixture, parse_row
from sft.packing import efficiency, pack
from sft.trainer import SFTConfig, isolation_mode, lr_multiplier, nll_sum, train_step
from stages.config import load_config
from stages.schema import RunConfig


def model_for(preset):
    cfg = load_config(RunConfig, None, [f"model={preset}"]).model
    tok = load_tokenizer(cfg)
    return build_model(cfg, tok).eval(), tok


def rows_from(n, seed=0):
    return [parse_row(f"gen:{i}", r) for i, r in enumerate(sft_rows(n, seed))]


@pytest.mark.parametrize("strategy", ["ffd", "ffs"])
def test_packing_invariants(strategy):
    rng = random.Random(0)
    lengths = [rng.randint(1, 300) for _ in range(2000)] + [600, 900]
    res = pack(lengths, 512, strategy, seed=3)
    placed = sorted(i for b in res.bins for i in b)
    assert placed == [i for i, n in enumerate(lengths) if n <= 512]  # every fitting sequence exactly once
    assert sorted(res.dropped) == [2000, 2001] and not res.truncated  # never cropped unless asked
    assert all(sum(lengths[i] for i in b) <= 512 for b in res.bins)
    assert pack(lengths, 512, strategy, seed=3).bins == res.bins  # deterministic
    cut = pack(lengths, 512, strategy, truncate=True)
    assert sorted(cut.truncated) == [2000, 2001] and not cut.dropped


def test_ffd_fills_better_than_shuffle_and_lognormal_efficiency():
    rng = random.Random(0)
    lengths = [max(1, min(4096, int(rng.lognormvariate(6.0, 1.0)))) for _ in range(20000)]
    ffd, ffs = pack(lengths, 4096, "ffd"), pack(lengths, 4096, "ffs")
    assert efficiency(ffd, lengths, 4096) >= 0.99
    assert efficiency(ffd, lengths, 4096) >= efficiency(ffs, lengths, 4096) > 0.9


def test_default_data_packing_efficiency_at_2048():
    _, tok = model_for("tiny")
    seqs, _ = tokenize_rows(tok, rows_from(3000))
    lengths = [len(s.input_ids) for s in seqs]
    assert efficiency(pack(lengths, 2048, "ffd"), lengths, 2048) >= 0.95


def _per_conversation_loss(model, seqs):
    s_tot = n_tot = 0.0
    for s in seqs:
        ids = torch.tensor([s.input_ids])
        out = model(input_ids=ids, use_cache=False)
        a, b = masked_nll_sum(out.logits, ids, torch.tensor([s.loss_mask]))
        s_tot, n_tot = s_tot + float(a), n_tot + float(b)
    return s_tot / n_tot


@pytest.mark.parametrize("preset,mode", [("tiny_qwen3", "packed"), ("tiny_llama", "packed"), ("tiny", "rows")])
def test_packed_loss_equals_unpacked(preset, mode):
    model, tok = model_for(preset)
    assert isolation_mode("auto", model) == mode
    seqs, _ = tokenize_rows(tok, rows_from(12, seed=5))
    batch = make_batch(seqs, mode, 2048, tok.pad_token_id)
    with torch.no_grad():
        out = model(**model_inputs(batch, "cpu"))
        s, n = masked_nll_sum(out.logits, batch["input_ids"], batch["loss_mask"])
        assert abs(float(s) / float(n) - _per_conversation_loss(model, seqs)) < 1e-5
        # the trainer's path: LM head only where the next token is a target; same sum, same count
        assert takes_logits_to_keep(model)
        s2, n2 = nll_sum(model, batch, "cpu")
        assert float(n2) == float(n) and abs(float(s2) - float(s)) < 1e-3 * float(n)


def test_hybrid_refuses_leaky_packing_and_packing_would_leak():
    model, tok = model_for("tiny")
    with pytest.raises(ValueError, match="leak Mamba state"):
        isolation_mode("packed", model)
    seqs, _ = tokenize_rows(tok, rows_from(6, seed=5))
    batch = make_batch(seqs, "packed", 2048, tok.pad_token_id)
    with torch.no_grad():  # the guard is real: packing a hybrid changes the loss
        out = model(**model_inputs(batch, "cpu"))
        s, n = masked_nll_sum(out.logits, batch["input_ids"], batch["loss_mask"])
        assert abs(float(s) / float(n) - _per_conversation_loss(model, seqs)) > 1e-3


def test_only_assistant_completions_are_targets():
    """No system/user/tool/generation-prompt token is ever a target, on the whole default mix."""
    _, tok = model_for("tiny")
    seqs, _ = tokenize_rows(tok, rows_from(300, seed=1))
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    for s in seqs:
        for i, m in enumerate(s.loss_mask):
            if m and not s.loss_mask[i - 1]:  # a trained span starts right after a generation prompt
                before = tok.decode(s.input_ids[max(0, i - 6): i])
                assert before.endswith("<|im_start|>assistant\n<think>\n") or before.endswith("<think></think>"), before
            if m:
                assert s.input_ids[i] != im_start
        for span in tok.decode([t if m else im_start for t, m in zip(s.input_ids, s.loss_mask)]).split("<|im_start|>"):
            assert span == "" or span.endswith("<|im_end|>"), span  # each span is one whole assistant completion


def test_gradient_accumulation_is_exact():
    """Loss/grads with 4 micro-batches equal one batch of 4: normalised by the global token count."""
    model, tok = model_for("tiny_qwen3")
    seqs, _ = tokenize_rows(tok, rows_from(16, seed=2))
    packs = [make_batch(seqs[i: i + 4], "packed", 1024, tok.pad_token_id) for i in range(0, 16, 4)]
    whole = {k: torch.cat([p[k] for p in packs]) for k in packs[0]}
    results = []
    for mbs in (packs, [whole]):
        m = build_model(load_config(RunConfig, None, ["model=tiny_qwen3"]).model, tok)
        opt = torch.optim.SGD(m.parameters(), lr=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        orig = opt.zero_grad
        opt.zero_grad = lambda set_to_none=True: None  # keep grads for comparison
        out = train_step(m, mbs, opt, sched, grad_clip=0, device="cpu")
        opt.zero_grad = orig
        results.append((out["loss"], torch.cat([p.grad.flatten() for p in m.parameters()])))
    assert abs(results[0][0] - results[1][0]) < 1e-5
    assert torch.allclose(results[0][1], results[1][1], atol=1e-6)


def test_lr_schedules():
    c = SFTConfig(max_steps=110, warmup_steps=10, min_lr_ratio=0.1, schedule="cosine")
    assert lr_multiplier(0, c) == pytest.approx(0.1) and lr_multiplier(9, c) == pytest.approx(1.0)
    assert lr_multiplier(10, c) == pytest.approx(1.0) and lr_multiplier(60, c) == pytest.approx(0.55)
    assert lr_multiplier(110, c) == pytest.approx(0.1)
    w = SFTConfig(max_steps=110, warmup_steps=10, min_lr_ratio=0.0, schedule="wsd", wsd_decay_fraction=0.2)
    assert lr_multiplier(80, w) == pytest.approx(1.0) and lr_multiplier(100, w) == pytest.approx(0.5)
    assert lr_multiplier(110, w) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_multiplier(50, SFTConfig(schedule="linear"))


def test_malformed_rows_name_file_line_field_or_are_counted(tmp_path):
    good = sft_rows(5)
    f = tmp_path / "d.jsonl"
    lines = [json.dumps(r) for r in good]
    lines.insert(2, json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]}))
    lines.insert(4, "{not json")
    f.write_text("\n".join(lines) + "\n")
    cfg = SFTDataConfig(sources=[DataSource(path=str(f))], val_fraction=0.0)
    with pytest.raises(DataError, match=r"d.jsonl:3: messages\[1\]\.role: unknown role 'bot'"):
        load_mixture(cfg, 0)
    cfg.skip_malformed = True
    data = load_mixture(cfg, 0)
    assert data.skipped == 2 and len(data.train) == 5
    (tmp_path / "e.jsonl").write_text(json.dumps({"conversation": []}) + "\n")
    with pytest.raises(DataError, match=r"e.jsonl:1: messages: missing"):
        load_mixture(SFTDataConfig(sources=[DataSource(path=str(tmp_path / "e.jsonl"))]), 0)
    with pytest.raises(DataError, match="no such file"):
        load_mixture(SFTDataConfig(sources=[DataSource(path=str(tmp_path / "nope.jsonl"))]), 0)


def test_parquet_datasets_dir_mixing_and_split(tmp_path):
    import datasets

    rows = sft_rows(40, seed=1)
    flat = [{"messages": r["messages"], "tools": json.dumps(r.get("tools")) if r.get("tools") else ""} for r in rows]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"messages": json.dumps(r["messages"]), "tools": r["tools"]} for r in flat]),
                   tmp_path / "x.parquet")
    datasets.Dataset.from_list([{"messages": r["messages"]} for r in sft_rows(20, seed=2)
                                if "tools" not in r]).save_to_disk(str(tmp_path / "ds"))
    f = tmp_path / "a.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in sft_rows(30, seed=3)))
    with pytest.raises(DataError, match=r"x.parquet:row 1: messages: must be a non-empty list"):
        load_mixture(SFTDataConfig(sources=[DataSource(path=str(tmp_path / "x.parquet"))]), 0)
    pq.write_table(pa.Table.from_pylist(flat), tmp_path / "x.parquet")
    cfg = SFTDataConfig(val_fraction=0.1, sources=[DataSource(path=str(tmp_path / "x.parquet"), weight=0.5),
                                                   DataSource(path=str(tmp_path / "ds")),
                                                   DataSource(path=str(f), weight=2.0)])
    data = load_mixture(cfg, 0)
    n_ds = data.per_source[1]["rows"]
    assert [p["rows"] for p in data.per_source] == [40, n_ds, 30]
    assert len(data.val) == 4 + round(n_ds * 0.1) + 3
    assert len(data.train) == 18 + (n_ds - round(n_ds * 0.1)) + 54
    assert any(r.tools for r in data.train)  # tools decoded from the parquet string column
    assert [r.origin for r in load_mixture(cfg, 0).train] == [r.origin for r in data.train]  # seeded


def test_default_math_answers_carry_verbosity_for_rlhf_to_remove():
    """The generated SFT answers come in the ANSWER_STYLES at their shares; the math verifier credits
    the concise boxed and the padded (boxed inside filler) ones alike, so RLVR keeps the padding and
    only the judge (RLHF) has a reason to drop it, while the unboxed words style gets 0."""
    from common.synthetic import ANSWER_SHARES, ANSWER_STYLES
    from grpo.envs.math_env import MathEnv

    rows = [r for r in sft_rows(3000, 0) if r["messages"][-1].get("reasoning_content")]
    seen = {s: 0 for s in ANSWER_STYLES}
    env = MathEnv()
    for r in rows:
        answer, content = r["messages"][-1]["reasoning_content"].rsplit("= ", 1)[1], r["messages"][-1]["content"]
        style = next(s for s, f in ANSWER_STYLES.items() if content == f.format(answer))
        seen[style] += 1
        if seen[style] <= 20:
            reward = env.score({"answer": answer}, "x</think>" + content).reward
            assert reward == (0.0 if style == "words" else 1.0), content
    for style, share in ANSWER_SHARES.items():
        assert abs(seen[style] / len(rows) - share) < 0.03, (style, seen)


def test_rows_bins_group_similar_lengths_within_their_padded_slots():
    """One conversation per row: a bin costs rows x its longest row. by_length keeps that within the
    slots, keeps every sequence exactly once, and pads far less than first-fit by tokens."""
    rng = random.Random(0)
    lengths = [rng.choice([rng.randint(40, 80), rng.randint(280, 380), rng.randint(100, 160)]) for _ in range(2000)]
    lengths += [700, 0]
    res = pack(lengths, 512, "by_length")
    assert res.dropped == [2000] and sorted(i for b in res.bins for i in b) == [i for i in range(2000) if lengths[i]]
    assert all(len(b) * max(lengths[i] for i in b) <= 512 for b in res.bins)
    rows_eff = efficiency(res, lengths, 512, rows=True)
    by_tokens = pack(lengths, 512, "ffd")
    assert rows_eff > 0.95 > efficiency(by_tokens, lengths, 512, rows=True) + 0.1
    assert pack(lengths, 512, "by_length", truncate=True).truncated == [2000]
    with pytest.raises(ValueError, match="ffd, ffs, by_length"):
        pack(lengths, 512, "by_row")
