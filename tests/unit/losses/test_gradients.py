"""Gradients w.r.t. policy_logps: Eq. 6, Eq. 9/12, and the RLOO equivalence of §3.4."""

import pytest
import torch
from torch.testing import assert_close

from nemo_rpo.losses import rpo_loss


def _grad(metric, policy, ref, rewards, beta, eta):
    policy = policy.clone().requires_grad_(True)
    rpo_loss(
        policy_logps=policy, ref_logps=ref, rewards=rewards, metric=metric, beta=beta, eta=eta
    ).sum().backward()
    return policy.grad


@pytest.mark.parametrize("k", [2, 3, 4, 8])
def test_bwd_gradient_is_softmax_difference(k):
    """Eq. 9/12: dL/dpolicy_logps = beta * (softmax(a) - softmax(eta r*)), a = beta log(pi/pi_ref)."""
    policy, ref, rewards = (
        torch.randn(16, k, dtype=torch.float64),
        torch.randn(16, k, dtype=torch.float64),
        torch.randn(16, k, dtype=torch.float64),
    )
    beta, eta = 0.7, 3.0
    expected = beta * (torch.softmax(beta * (policy - ref), -1) - torch.softmax(eta * rewards, -1))
    assert_close(_grad("bwd", policy, ref, rewards, beta, eta), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("k", [2, 3, 4, 8])
def test_sqloo_gradient_is_leave_one_out_residual(k):
    """Eq. 6 / §3.4: dL/da_k = K/(K-1) (a^_k - b^_k), so dL/dpolicy_k = beta K/(K-1) (a^_k - b^_k)."""
    policy, ref, rewards = (
        torch.randn(16, k, dtype=torch.float64),
        torch.randn(16, k, dtype=torch.float64),
        torch.randn(16, k, dtype=torch.float64),
    )
    beta, eta = 0.4, 2.5
    a, b = beta * (policy - ref), eta * rewards

    def loo(x):
        return x - (x.sum(-1, keepdim=True) - x) / (k - 1)

    expected = beta * k / (k - 1) * (loo(a) - loo(b))
    assert_close(_grad("sqloo", policy, ref, rewards, beta, eta), expected, rtol=1e-10, atol=1e-12)


def test_sqloo_with_eta_1_is_rloo():
    """Online sqloo (eta=1) gives the RLOO gradient (Ahmadian et al., 2024) up to a positive constant.

    RLOO, written independently: sample K responses, reward R_k = r_k - beta log(pi/pi_ref)(y_k)
    (the KL-penalized reward, held constant), baseline = mean of the other K-1 rewards, and the
    surrogate loss  L_rloo = -(1/K) sum_k (R_k - baseline_k) log pi_theta(y_k).
    §3.4 gives (K-1)/K S_k = -(R_k - baseline_k), so grad L_sqloo = beta K^2/(K-1) grad L_rloo.
    The policy here is a real parametric model: a per-token softmax table theta[V] over 6-token
    responses, with K=4 responses to each of 3 prompts.
    """
    torch.manual_seed(0)
    num_prompts, k, length, vocab, beta = 3, 4, 6, 11, 0.05
    theta = torch.randn(num_prompts, vocab, dtype=torch.float64, requires_grad=True)
    ref_theta = torch.randn(num_prompts, vocab, dtype=torch.float64)
    tokens = torch.randint(vocab, (num_prompts, k, length))
    rewards = torch.randn(num_prompts, k, dtype=torch.float64)

    def seq_logps(table):
        logp = torch.log_softmax(table, -1)  # [P, V]
        return torch.gather(logp.unsqueeze(1).expand(-1, k, -1), 2, tokens).sum(-1)  # [P, K]

    ref_logps = seq_logps(ref_theta)
    loss = rpo_loss(
        policy_logps=seq_logps(theta),
        ref_logps=ref_logps,
        rewards=rewards,
        metric="sqloo",
        beta=beta,
        eta=1.0,
    )
    (grad_rpo,) = torch.autograd.grad(loss.sum(), theta)

    logps = seq_logps(theta)
    penalized = (rewards - beta * (logps - ref_logps)).detach()
    baseline = (penalized.sum(-1, keepdim=True) - penalized) / (k - 1)
    rloo_surrogate = -((penalized - baseline) * logps).sum(-1) / k
    (grad_rloo,) = torch.autograd.grad(rloo_surrogate.sum(), theta)

    assert grad_rpo.abs().max() > 1e-3  # non-trivial
    assert_close(grad_rpo, beta * k**2 / (k - 1) * grad_rloo, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("metric", ["sq", "sqloo", "bwd", "fwd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_finite_for_extreme_margins(metric, dtype):
    """Implicit margins and rewards up to +-1e4 in fp32 and bf16 give finite losses and gradients."""
    k = 2 if metric == "sq" else 4
    policy = (torch.rand(32, k) * 2e4 - 1e4).to(dtype)
    ref = (torch.rand(32, k) * 2e4 - 1e4).to(dtype)
    rewards = (torch.rand(32, k) * 2e4 - 1e4).to(dtype)
    policy.requires_grad_(True)
    loss = rpo_loss(policy_logps=policy, ref_logps=ref, rewards=rewards, metric=metric, beta=1.0, eta=1.0)
    assert loss.dtype == torch.float32
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(policy.grad.float()).all()


def test_no_gradient_into_reference_or_rewards():
    policy = torch.randn(4, 3, requires_grad=True)
    ref = torch.randn(4, 3, requires_grad=True)
    rewards = torch.randn(4, 3, requires_grad=True)
    rpo_loss(
        policy_logps=policy, ref_logps=ref, rewards=rewards, metric="bwd", beta=0.5, eta=1.0
    ).sum().backward()
    assert ref.grad is None and rewards.grad is None and policy.grad is not None
