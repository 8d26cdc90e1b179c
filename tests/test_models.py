"""Model factory: every preset builds deterministically, trains, and reloads through plain HF APIs."""
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from common.models import (ModelConfig, build_model, is_lora, load_tokenizer, merged_for_export,
                           resolve_dtype)
from stages.checkpoint import save_pretrained
from stages.config import load_config
from stages.run import state_dict_sha256
from stages.schema import RunConfig


def model_cfg(name: str, *extra: str) -> ModelConfig:
    return load_config(RunConfig, None, [f"model={name}", *extra]).model


@pytest.mark.parametrize("preset", ["tiny", "tiny_moe", "tiny_qwen3", "tiny_llama"])
def test_preset_forward_backward_and_hf_reload(preset, tmp_path):
    cfg = model_cfg(preset)
    tok = load_tokenizer(cfg)
    model = build_model(cfg, tok)
    assert model.config.vocab_size == len(tok) and model.config.eos_token_id == tok.eos_token_id
    x = torch.randint(0, len(tok), (2, 48), generator=torch.Generator().manual_seed(0))
    out = model(input_ids=x, labels=x)
    assert torch.isfinite(out.loss) and 6.0 < out.loss.item() < 9.0  # ~ln(vocab) at random init
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    save_pretrained(model, tok, tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    model.eval(), again.eval()
    with torch.no_grad():
        assert torch.allclose(model(input_ids=x).logits, again(input_ids=x).logits, atol=1e-6)
    assert tok2.chat_template == tok.chat_template and len(tok2) == len(tok)


def test_seeded_build_is_deterministic_and_seed_matters():
    cfg = model_cfg("tiny")
    tok = load_tokenizer(cfg)
    torch.manual_seed(123)
    a = state_dict_sha256(build_model(cfg, tok))
    after = torch.rand(1)
    torch.manual_seed(123)
    b = state_dict_sha256(build_model(cfg, tok))
    assert a == b
    assert torch.equal(after, torch.rand(1) * 0 + after)  # build did not consume the caller's RNG
    assert a != state_dict_sha256(build_model(model_cfg("tiny", "model.init_seed=1"), tok))


def test_hybrid_preset_has_nano_like_layers():
    cfg = model_cfg("tiny")
    model = build_model(cfg, load_tokenizer(cfg))
    kinds = set(model.config.layers_block_type)
    assert {"linear_attention", "full_attention", "mlp"} <= kinds
    assert model.config.head_dim >= 32  # vLLM's CPU attention backend needs it
    moe = build_model(model_cfg("tiny_moe"), load_tokenizer(cfg))
    assert moe.config.n_routed_experts > moe.config.num_experts_per_tok >= 1 and moe.config.n_shared_experts >= 1


def test_load_from_local_path(tmp_path):
    cfg = model_cfg("tiny_llama")
    tok = load_tokenizer(cfg)
    model = build_model(cfg, tok)
    save_pretrained(model, tok, tmp_path)
    local = ModelConfig(name_or_path=str(tmp_path))
    tok2 = load_tokenizer(local)
    again = build_model(local, tok2)
    assert state_dict_sha256(again) == state_dict_sha256(model)


def test_lora_wraps_and_merges_for_export(tmp_path):
    cfg = model_cfg("tiny", "model.lora.enabled=true", "model.lora.r=4")
    tok = load_tokenizer(cfg)
    model = build_model(cfg, tok)
    assert is_lora(model)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < n_train < sum(p.numel() for p in model.parameters()) / 5
    with torch.no_grad():  # make the adapters non-trivial (B starts at zero)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    x = torch.randint(0, len(tok), (1, 24))
    model.eval()
    with torch.no_grad():
        want = model(input_ids=x).logits
    merged = merged_for_export(model)
    save_pretrained(merged, tok, tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.allclose(again.eval()(input_ids=x).logits, want, atol=1e-4)
    assert not any("lora" in k for k in again.state_dict())


def test_dtype_selection():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("float17", torch.device("cpu"))


def test_model_config_needs_a_source():
    with pytest.raises(ValueError, match="name_or_path.*arch"):
        build_model(ModelConfig(), load_tokenizer(ModelConfig()))


@pytest.mark.gpu
def test_bf16_on_gpu():
    cfg = model_cfg("tiny_qwen3")
    tok = load_tokenizer(cfg)
    model = build_model(cfg, tok)
    assert next(model.parameters()).dtype == torch.bfloat16 and next(model.parameters()).is_cuda
    x = torch.randint(0, len(tok), (2, 32), device="cuda")
    model(input_ids=x, labels=x).loss.backward()


@pytest.mark.parametrize("preset,billions", [("qwen3_0p5b", 0.60), ("qwen3_1p5b", 1.72), ("nemotron_h_0p5b", 0.45)])
def test_benchmark_presets_have_their_size(preset, billions):
    """The GPU benchmark configs (built on the meta device: shapes only, no memory) are the sizes
    RESULTS.md reports them as."""
    from common.models import build_config
    from transformers import AutoModelForCausalLM

    cfg = model_cfg(preset)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(build_config(cfg.arch, load_tokenizer(cfg)))
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, rel=0.03)
