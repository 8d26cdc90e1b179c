"""GRPO pure functions against hand-computed values, including the edge cases."""
import math

import pytest
import torch

from grpo.algorithm import (PolicyLossConfig, group_advantages, importance_weights, kl_penalty,
                            logprob_mismatch, policy_loss_sum, zero_variance_groups)


def test_leave_one_out_advantages_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    # baseline for a 1: (2-1)/3 = 1/3 -> 2/3; for a 0: 2/3 -> -2/3; group std (population) = 0.5
    assert torch.allclose(group_advantages(r, "loo"), torch.tensor([[4 / 3, -4 / 3, -4 / 3, 4 / 3]]))
    assert torch.allclose(group_advantages(r, "grpo"), torch.tensor([[1.0, -1.0, -1.0, 1.0]]))
    r = torch.tensor([[3.0, 1.0, 2.0]])  # std = sqrt(2/3); loo: 3-(1.5)=1.5, 1-2.5=-1.5, 2-2=0
    s = math.sqrt(2 / 3)
    assert torch.allclose(group_advantages(r, "loo"), torch.tensor([[1.5 / s, -1.5 / s, 0.0]]), atol=1e-6)


def test_zero_std_and_single_response_groups_get_zero_not_nan():
    r = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    adv = group_advantages(r, "loo")
    assert torch.equal(adv[:2], torch.zeros(2, 3)) and torch.isfinite(adv).all() and adv[2, 1] > 0
    assert zero_variance_groups(r).tolist() == [True, True, False]
    assert torch.equal(group_advantages(torch.tensor([[5.0]]), "loo"), torch.zeros(1, 1))
    assert torch.equal(group_advantages(torch.tensor([[5.0]]), "grpo"), torch.zeros(1, 1))
    with pytest.raises(ValueError):
        group_advantages(r, "ppo")


def test_clipped_policy_loss_by_hand():
    cfg = PolicyLossConfig(clip_low=0.2, clip_high=0.28)
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.0, 1.5, 0.5, 1.1]]))  # ratios 1, 1.5, 0.5, 1.1
    adv = torch.tensor([[2.0, 2.0, -1.0, -1.0]])
    mask = torch.ones(1, 4)
    loss, st = policy_loss_sum(logp, old, adv, mask, cfg)
    # -min(r*A, clip(r)*A): -2; -min(3, 2.56) = -2.56; -min(-0.5, -0.8) = 0.8; -min(-1.1, -1.1) = 1.1
    assert loss.item() == pytest.approx(-2 - 2.56 + 0.8 + 1.1, abs=1e-5)
    assert st["clip_count"] == 2 and st["tokens"] == 4
    mask2 = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    assert policy_loss_sum(logp, old, adv, mask2, cfg)[0].item() == pytest.approx(-2 + 1.1, abs=1e-5)


def test_gradient_is_minus_advantage_on_policy():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, _ = policy_loss_sum(logp, logp.detach(), torch.tensor([3.0]), torch.ones(1, 2), PolicyLossConfig())
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-3.0, -3.0]]))


def test_all_truncated_batch_has_no_loss_and_no_nan():
    logp = torch.randn(3, 5, requires_grad=True)
    loss, st = policy_loss_sum(logp, logp.detach(), torch.ones(3), torch.zeros(3, 5), PolicyLossConfig())
    normalised = loss / max(st["tokens"], 1.0)
    normalised.backward()
    assert normalised.item() == 0.0 and torch.equal(logp.grad, torch.zeros(3, 5))


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(math.log(2))
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(0.5 + math.log(2) - 1)
    assert kl_penalty(ref, ref, "k3").item() == 0.0
    cfg = PolicyLossConfig(kl_coef=0.1)
    loss, st = policy_loss_sum(logp[None], logp[None], torch.zeros(1), torch.ones(1, 1), cfg, ref_logp=ref[None])
    assert loss.item() == pytest.approx(0.1 * (0.5 + math.log(2) - 1)) and st["kl_sum"] > 0


def test_importance_weights_cap_and_sequence_masking():
    old = torch.tensor([[0.1, 1.0, 0.0], [0.0, 0.0, 0.0]])
    rollout = torch.zeros(2, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    w, keep = importance_weights(old, rollout, mask, cap=2.0, max_seq_error=0.5)
    assert w[0, 0].item() == pytest.approx(math.exp(0.1)) and w[0, 1].item() == 2.0  # e^1 capped
    assert keep.tolist() == [0.0, 1.0]  # seq 0: mean |err| = 0.55 > 0.5 -> masked


def test_mismatch_metrics():
    t = torch.tensor([[-1.0, -2.0]])
    m = logprob_mismatch(t, t.clone(), torch.ones(1, 2))
    assert m["gen_kl_error"] == 0.0 and m["token_mult_prob_error"] == 1.0
    m = logprob_mismatch(t, t - 0.1, torch.ones(1, 2))
    assert m["token_mult_prob_error"] == pytest.approx(math.exp(0.1), rel=1e-5)
    assert m["gen_kl_error"] == pytest.approx(math.exp(0.1) - 0.1 - 1, rel=1e-4)
