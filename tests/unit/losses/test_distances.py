"""Each metric on a hand-worked example, plus the identities between metrics (paper §3.2–3.3, App. A)."""

import math

import pytest
import torch
from torch.testing import assert_close

from nemo_rpo.losses import bwd, bwd_bernoulli, bwd_categorical, fwd, rpo_loss, sq, sqloo

INF = math.inf


def _t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_sq_hand_worked():
    """beta=1, policy=[-1, -2], ref=[0, 0] -> a=[-1, -2], implicit margin 1.
    rewards=[3, 0], eta=1 -> target margin 3.  sq = 1/2 (1 - 3)^2 = 2."""
    loss = rpo_loss(
        policy_logps=_t([[-1, -2]]),
        ref_logps=_t([[0, 0]]),
        rewards=_t([[3, 0]]),
        metric="sq",
        beta=1.0,
        eta=1.0,
    )
    assert_close(loss, _t([2.0]))


def test_sqloo_hand_worked():
    """a=[1, 2, 3]: a^_k = a_k - mean_{j!=k} a_j = [1-2.5, 2-2, 3-1.5] = [-1.5, 0, 1.5].
    b=[0, 0, 3]: b^ = [0-1.5, 0-1.5, 3-0] = [-1.5, -1.5, 3].
    sqloo = 1/2 (0^2 + 1.5^2 + 1.5^2) = 2.25."""
    assert_close(sqloo(_t([[1, 2, 3]]), _t([[0, 0, 3]])), _t([2.25]))


def test_bwd_bernoulli_hand_worked():
    """a margin 0 -> p_a = 1/2; b margin ln 3 -> p_b = 3/4.
    KL[p_b || p_a] = 3/4 ln(3/4 / 1/2) + 1/4 ln(1/4 / 1/2) = 3/4 ln 1.5 - 1/4 ln 2 = 0.1308120."""
    expected = 0.75 * math.log(1.5) - 0.25 * math.log(2.0)
    assert_close(bwd(_t([[0.5, 0.5]]), _t([[math.log(3.0), 0.0]])), _t([expected]))


def test_bwd_categorical_hand_worked():
    """a = 0 -> q^a = (1/3, 1/3, 1/3); b = (ln 2, 0, 0) -> q^b = (1/2, 1/4, 1/4).
    KL[q^b || q^a] = 1/2 ln(3/2) + 2 * 1/4 ln(3/4) = 1/2 ln(9/8) = 0.0588915."""
    assert_close(bwd(_t([[0, 0, 0]]), _t([[math.log(2.0), 0, 0]])), _t([0.5 * math.log(9 / 8)]))


def test_fwd_categorical_hand_worked():
    """Same q^a, q^b as above. KL[q^a || q^b] = 1/3 [ln(2/3) + 2 ln(4/3)] = 1/3 ln(32/27) = 0.0566330."""
    assert_close(fwd(_t([[0, 0, 0]]), _t([[math.log(2.0), 0, 0]])), _t([math.log(32 / 27) / 3]))


def test_fwd_bernoulli_hand_worked():
    """p_a = (1/2, 1/2), p_b = (3/4, 1/4): KL[p_a || p_b] = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3)."""
    assert_close(fwd(_t([[0.0, 0.0]]), _t([[math.log(3.0), 0.0]])), _t([0.5 * math.log(4 / 3)]))


def test_fwd_is_not_bwd():
    """The paper's Eq. 10 repeats Eq. 7; fwd must be the other direction of the KL."""
    a, b = torch.randn(8, 4), torch.randn(8, 4)
    assert not torch.allclose(fwd(a, b), bwd(a, b), atol=1e-4)
    assert_close(fwd(a, b), bwd(b, a))


def test_categorical_bwd_at_k2_equals_bernoulli():
    a, b = torch.randn(64, 2, dtype=torch.float64) * 3, torch.randn(64, 2, dtype=torch.float64) * 3
    assert_close(bwd_categorical(a, b), bwd_bernoulli(a, b), rtol=1e-12, atol=1e-12)
    b[:5, 0] = INF
    assert_close(bwd_categorical(a, b), bwd_bernoulli(a, b), rtol=1e-12, atol=1e-12)


def test_sqloo_at_k2_is_twice_sq():
    a, b = torch.randn(64, 2, dtype=torch.float64), torch.randn(64, 2, dtype=torch.float64)
    assert_close(sqloo(a, b), 2 * sq(a, b), rtol=1e-12, atol=1e-12)


def test_sq_rejects_k_above_2_and_points_to_sqloo():
    with pytest.raises(ValueError, match="sqloo"):
        rpo_loss(
            policy_logps=torch.zeros(2, 3),
            ref_logps=torch.zeros(2, 3),
            rewards=torch.zeros(2, 3),
            metric="sq",
            beta=1.0,
            eta=1.0,
        )


@pytest.mark.parametrize("metric", ["sq", "sqloo", "bwd", "fwd"])
def test_invariant_to_per_prompt_constant(metric):
    """log Z(x) of Eq. 3 is a per-prompt constant: adding it to policy_logps changes no loss."""
    k = 2 if metric == "sq" else 4
    policy, ref, rewards = (
        torch.randn(16, k, dtype=torch.float64),
        torch.randn(16, k, dtype=torch.float64),
        torch.randn(16, k, dtype=torch.float64),
    )
    shift = torch.randn(16, 1, dtype=torch.float64) * 50
    base = rpo_loss(policy_logps=policy, ref_logps=ref, rewards=rewards, metric=metric, beta=0.3, eta=2.0)
    shifted = rpo_loss(
        policy_logps=policy + shift, ref_logps=ref, rewards=rewards, metric=metric, beta=0.3, eta=2.0
    )
    assert_close(shifted, base, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("metric", ["sq", "sqloo", "bwd", "fwd"])
def test_invariant_to_permuting_responses(metric):
    k = 2 if metric == "sq" else 5
    policy, ref, rewards = torch.randn(16, k), torch.randn(16, k), torch.randn(16, k)
    perm = torch.randperm(k) if k > 2 else torch.tensor([1, 0])
    base = rpo_loss(policy_logps=policy, ref_logps=ref, rewards=rewards, metric=metric, beta=0.5, eta=1.5)
    permuted = rpo_loss(
        policy_logps=policy[:, perm],
        ref_logps=ref[:, perm],
        rewards=rewards[:, perm],
        metric=metric,
        beta=0.5,
        eta=1.5,
    )
    assert_close(permuted, base, rtol=1e-5, atol=1e-6)


def test_infinite_target_is_exact_not_a_large_constant():
    """With +inf for one response, bwd categorical is exactly -log softmax(a)_0."""
    a = torch.randn(8, 4)
    b = torch.zeros(8, 4)
    b[:, 0] = INF
    assert_close(bwd(a, b), -torch.log_softmax(a, dim=-1)[:, 0], rtol=0, atol=0)
    # Two tied +inf responses share the mass equally.
    b[:, 1] = INF
    expected = -0.5 * (torch.log_softmax(a, -1)[:, 0] + torch.log_softmax(a, -1)[:, 1]) + math.log(0.5)
    assert_close(bwd(a, b), expected, rtol=1e-6, atol=1e-6)
