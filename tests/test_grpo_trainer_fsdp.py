"""The GRPO policy trainer as 2 Ray actors sharding the model with FSDP2 (gloo on CPU) computes the
same log-probs, the same update and the same weights as the trainer on one process."""
import os
import random

import pytest
import torch

from common import ray_utils
from grpo.rollout import Sample
from grpo.trainer import OptimConfig, PolicyTrainer, build_batch

pytestmark = pytest.mark.slow


def _batch(n: int = 7, seed: int = 0, untrained: tuple[int, ...] = (3,)):
    """n samples of random lengths, a mix of advantages; rows in `untrained` have no loss (the update
    skips them: with an odd number of trained rows the 2 ranks get unequal shares, one padded)."""
    rng = random.Random(seed)
    samples = [Sample([rng.randrange(10, 1000) for _ in range(rng.randint(4, 9))],
                      [rng.randrange(10, 1000) for _ in range(rng.randint(1, 12))], [], truncated=False)
               for _ in range(n)]
    for s in samples:
        s.logprobs = [-5.0] * len(s.response_ids)  # replaced by the trainer's own below
    adv = [rng.uniform(-1.5, 1.5) for _ in range(n)]
    return build_batch(samples, adv, [i not in untrained for i in range(n)], pad_id=0)


def test_two_fsdp_ranks_match_one_process(tiny_model_dir):
    os.environ["RAY_AUTH_MODE"] = "disabled"
    optim = OptimConfig(lr=1e-3, warmup_steps=0, micro_batch_size=2)
    single = PolicyTrainer(tiny_model_dir, optim)
    batch = _batch(untrained=(3, 5))  # 5 trained rows: 3 on rank 0, 2 + a padding row on rank 1
    ray_utils.init_ray(num_cpus=2)
    try:
        group = ray_utils.ActorGroup(PolicyTrainer, 2, tiny_model_dir, optim)
        for step in range(2):
            old1 = single.logprobs(batch)
            old2 = torch.cat(ray_utils.get(group.call("logprobs", batch)))
            assert old1.shape == old2.shape == batch.response_mask.shape
            assert torch.allclose(old1, old2, atol=1e-5)
            batch.rollout_logp = old1 * batch.generated_mask + 0.01 * batch.generated_mask  # a small mismatch
            m1 = single.update(batch, old1)
            m2 = ray_utils.get(group.call("update", batch, old2))[0]
            for key in ("loss", "grad_norm", "clip_fraction", "trained_tokens", "gen_kl_error"):
                assert m1[key] == pytest.approx(m2[key], rel=1e-4, abs=1e-6), (step, key, m1[key], m2[key])
            assert m1["trained_tokens"] > 0 and m1["grad_norm"] > 0
        states = ray_utils.get(group.call("state_dict"))
        assert states[1] == {}  # the full weights are gathered on rank 0 only
        w1, w2 = single.state_dict(), states[0]
        assert w1.keys() == w2.keys()
        # 2 Adam steps of lr 1e-3 move weights ~2e-3; the ranks trim their own padding, so float
        # summation order differs and Adam's sign-like first steps carry that as ~1e-5 differences.
        assert all(torch.allclose(w1[k], w2[k], atol=5e-5) for k in w1)
        opt_state, _ = ray_utils.get(group.call("training_state"))[0]
        assert len(opt_state["state"]) == len(single.optimizer.state)  # unsharded, keyed by name
    finally:
        ray_utils.shutdown()


def test_update_without_old_logprobs_matches_a_separate_pass(tiny_model_dir):
    """The RL loop passes no old log-probs: the update's own forward supplies them, which must give
    the same step as computing them first (the weights do not change until the optimizer step)."""
    optim = OptimConfig(lr=1e-3, warmup_steps=0, micro_batch_size=3)
    separate, folded = PolicyTrainer(tiny_model_dir, optim), PolicyTrainer(tiny_model_dir, optim)
    batch = _batch(n=9)
    for step in range(2):
        old = separate.logprobs(batch)
        gen = batch.generated_mask
        batch.rollout_logp = (old + 0.01) * gen
        batch.rollout_logp[5] += 1.0 * gen[5]  # one sequence far off: the mismatch mask drops it
        m1, m2 = separate.update(batch, old), folded.update(batch)
        assert m1["mismatch_masked_fraction"] == pytest.approx(1 / 8)  # of the 8 trained rows (row 3 is not)
        for key in ("loss", "grad_norm", "clip_fraction", "trained_tokens", "gen_kl_error", "is_weight_mean",
                    "mismatch_masked_fraction", "logprob_abs_error"):
            assert m1[key] == pytest.approx(m2[key], rel=1e-4, abs=1e-6), (step, key, m1[key], m2[key])
    w0, w1, w2 = PolicyTrainer(tiny_model_dir, optim).state_dict(), separate.state_dict(), folded.state_dict()
    assert all(torch.allclose(w1[k], w2[k], atol=1e-6) for k in w1)
    assert any(not torch.equal(w1[k], w0[k]) for k in w1)  # it did train


def test_update_with_every_token_masked_leaves_the_weights_alone(tiny_model_dir):
    """If the mismatch mask drops every sequence (e.g. a refit that failed), no optimizer step is
    taken: Adam's momentum from earlier steps must not move the weights on zero gradients."""
    trainer = PolicyTrainer(tiny_model_dir, OptimConfig(lr=1e-3, warmup_steps=0))
    batch = _batch()
    batch.rollout_logp = trainer.logprobs(batch) * batch.generated_mask
    assert trainer.update(batch)["trained_tokens"] > 0  # a real step: Adam now has momentum
    before = trainer.state_dict()
    batch.rollout_logp = batch.rollout_logp - 5.0 * batch.generated_mask  # every sequence far off
    m = trainer.update(batch)
    assert m["trained_tokens"] == 0 and m["mismatch_masked_fraction"] == 1.0
    after = trainer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
