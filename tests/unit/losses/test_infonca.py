"""InfoNCA (Chen et al., 2024), added as one registered definition: equals rpo_bwd up to a constant.

InfoNCA is the cross-entropy ``H(q^b, q^a) = -sum_k q^b_k log q^a_k`` from the reward distribution
``q^b = softmax(r*/alpha)`` to the implicit one ``q^a = softmax(beta log(pi/pi_ref))``. With
``eta = 1/alpha``, ``H(q^b, q^a) = KL[q^b || q^a] + H(q^b)``: rpo_bwd's categorical KL (Eq. 7; for K=2 the
Bernoulli on the margin is the same distribution) plus the entropy of the target, which the policy does
not change. Values differ by ``H(q^b)``; gradients are equal.
"""

import math

import pytest
import torch
from torch.testing import assert_close

from nemo_rpo.losses import LOSSES, preference_loss, rpo_loss


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    return -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)


def test_infonca_hand_worked():
    """K=3, beta=0.5, eta=1 (alpha=1). log pi/pi_ref = [0, 0, 0], so q^a = [1/3, 1/3, 1/3];
    rewards [ln 2, 0, 0] give q^b = [1/2, 1/4, 1/4].

    InfoNCA = -sum_k q^b_k log(1/3) = ln 3 = 1.098612.
    H(q^b) = 1/2 ln 2 + 2 * 1/4 ln 4 = 3/2 ln 2 = 1.039721.
    rpo_bwd = KL[q^b || q^a] = ln 3 - 3/2 ln 2 = 0.058892 = InfoNCA - H(q^b).
    d/d log pi_k (both) = beta (q^a_k - q^b_k) = 0.5 [1/3 - 1/2, 1/3 - 1/4, 1/3 - 1/4] = [-1/12, 1/24, 1/24].
    """
    ref = torch.tensor([[-2.0, -3.0, -4.0]], dtype=torch.float64)
    rewards = torch.tensor([[math.log(2.0), 0.0, 0.0]], dtype=torch.float64)
    grads = {}
    for name, expected in (("infonca", math.log(3.0)), ("rpo_bwd", math.log(3.0) - 1.5 * math.log(2.0))):
        policy = ref.clone().requires_grad_(True)
        loss = preference_loss(name, policy_logps=policy, ref_logps=ref, rewards=rewards, beta=0.5, eta=1.0)
        assert_close(loss, torch.tensor([expected], dtype=torch.float64))
        loss.sum().backward()
        grads[name] = policy.grad
    expected_grad = torch.tensor([[-1 / 12, 1 / 24, 1 / 24]], dtype=torch.float64)
    assert_close(grads["infonca"], expected_grad)
    assert_close(grads["rpo_bwd"], expected_grad)


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("alpha", [1.0, 0.25])
def test_infonca_equals_rpo_bwd_plus_target_entropy(k, alpha):
    """Values: infonca = rpo_bwd + H(softmax(r/alpha)); gradients: equal (eta = 1/alpha), any K."""
    torch.manual_seed(k)
    ref = torch.randn(16, k, dtype=torch.float64) * 3
    rewards = torch.randn(16, k, dtype=torch.float64)
    policy = torch.randn(16, k, dtype=torch.float64) * 3
    beta, eta = 0.3, 1.0 / alpha
    out = {}
    for name in ("infonca", "rpo_bwd"):
        leaf = policy.clone().requires_grad_(True)
        loss = preference_loss(name, policy_logps=leaf, ref_logps=ref, rewards=rewards, beta=beta, eta=eta)
        (grad,) = torch.autograd.grad(loss.sum(), leaf)
        out[name] = loss.detach(), grad
    assert_close(out["infonca"][0], out["rpo_bwd"][0] + _entropy(rewards / alpha), rtol=1e-12, atol=1e-12)
    assert_close(out["infonca"][1], out["rpo_bwd"][1], rtol=1e-12, atol=1e-14)


def test_infonca_infinite_reward_is_dpo_like():
    """An infinitely preferred response: all target mass on it, entropy 0, so infonca = rpo_bwd exactly."""
    policy = torch.tensor([[1.0, -0.5, 0.2]], dtype=torch.float64)
    ref = torch.zeros(1, 3, dtype=torch.float64)
    rewards = torch.tensor([[math.inf, 0.0, 0.0]], dtype=torch.float64)
    kw = {"policy_logps": policy, "ref_logps": ref, "rewards": rewards, "beta": 1.0, "eta": 1.0}
    assert_close(preference_loss("infonca", **kw), -torch.log_softmax(policy, -1)[:, 0])
    assert_close(preference_loss("infonca", **kw), rpo_loss(**kw, metric="bwd"))


def test_infonca_declares_what_it_reads():
    spec = LOSSES["infonca"]
    assert (spec.needs_rewards, spec.uses_reference, spec.pairwise, spec.hparams) == (
        True,
        True,
        False,
        ("beta", "eta"),
    )
