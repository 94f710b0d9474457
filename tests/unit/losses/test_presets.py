"""Table 1: every preset equals its published closed form; dispatch by name runs that preset."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from nemo_rpo.losses import (
    LOSSES,
    canonical_name,
    cdpo,
    distill_dpo,
    dpo,
    ipo,
    kto,
    preference_loss,
    rpo_loss,
    sequence_logps,
    sft_nll,
    simpo,
)

BETA = 0.3


@pytest.fixture
def pair():
    torch.manual_seed(1)
    return torch.randn(32, 2, dtype=torch.float64) * 4, torch.randn(32, 2, dtype=torch.float64) * 4


def _delta(policy, ref):
    """delta_{r_pi} of Table 1: log pi/pi_ref (y1) - log pi/pi_ref (y2)."""
    return (policy[:, 0] - ref[:, 0]) - (policy[:, 1] - ref[:, 1])


def test_dpo_exact_at_infinite_margin(pair):
    policy, ref = pair
    assert_close(
        dpo(policy_logps=policy, ref_logps=ref, beta=BETA),
        -F.logsigmoid(BETA * _delta(policy, ref)),
        rtol=0,
        atol=1e-15,
    )


@pytest.mark.parametrize("margin", [40.0, 60.0, 1e3])
def test_rpo_bwd_approaches_dpo_for_large_finite_margin(pair, margin):
    """eta * delta_r* >= 40 puts sigma(-40) ~ 4e-18 of mass on the rejected side: within 1e-6 of DPO."""
    policy, ref = pair
    rewards = torch.tensor([[margin / 2.0, 0.0]], dtype=torch.float64).expand(32, 2)
    loss = rpo_loss(policy_logps=policy, ref_logps=ref, rewards=rewards, metric="bwd", beta=BETA, eta=2.0)
    assert_close(loss, -F.logsigmoid(BETA * _delta(policy, ref)), rtol=0, atol=1e-6)


@pytest.mark.parametrize("label_smoothing", [0.05, 0.2, 0.4])
def test_cdpo_equals_closed_form_up_to_entropy(pair, label_smoothing):
    policy, ref = pair
    c = 1 - label_smoothing
    entropy = -(c * math.log(c) + (1 - c) * math.log(1 - c))
    p1 = policy.clone().requires_grad_(True)
    p2 = policy.clone().requires_grad_(True)
    ours = cdpo(policy_logps=p1, ref_logps=ref, beta=BETA, label_smoothing=label_smoothing)
    d1 = BETA * _delta(p2, ref)
    closed = -(c * F.logsigmoid(d1) + (1 - c) * F.logsigmoid(-d1))
    assert_close(ours + entropy, closed, rtol=1e-10, atol=1e-10)
    ours.sum().backward()
    closed.sum().backward()
    assert_close(p1.grad, p2.grad, rtol=1e-10, atol=1e-12)


def test_ipo_equals_closed_form_and_scaled_sq(pair):
    policy, ref = pair
    closed = (_delta(policy, ref) - 1 / (2 * BETA)) ** 2
    assert_close(ipo(policy_logps=policy, ref_logps=ref, beta=BETA), closed, rtol=1e-10, atol=1e-10)
    half = torch.tensor([[0.5, 0.0]], dtype=torch.float64).expand(32, 2)
    sq = rpo_loss(policy_logps=policy, ref_logps=ref, rewards=half, metric="sq", beta=BETA, eta=1.0)
    assert_close(closed, (2 / BETA**2) * sq, rtol=1e-10, atol=1e-10)


def test_distill_dpo_is_twice_sq(pair):
    policy, ref = pair
    rewards = torch.randn(32, 2, dtype=torch.float64)
    eta = 1.7
    closed = (BETA * _delta(policy, ref) - eta * (rewards[:, 0] - rewards[:, 1])) ** 2
    ours = distill_dpo(policy_logps=policy, ref_logps=ref, rewards=rewards, beta=BETA, eta=eta)
    assert_close(ours, closed, rtol=1e-10, atol=1e-10)
    sq = rpo_loss(policy_logps=policy, ref_logps=ref, rewards=rewards, metric="sq", beta=BETA, eta=eta)
    assert_close(ours, 2 * sq, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("gamma", [0.0, 0.5])
def test_simpo_equals_closed_form(gamma):
    """SimPO on token log-probs with lengths |y1| = 5, |y2| = 9."""
    torch.manual_seed(2)
    token_logps = -torch.rand(2 * 8, 12, dtype=torch.float64) * 3
    mask = torch.zeros(2 * 8, 12, dtype=torch.float64)
    mask[0::2, :5] = 1
    mask[1::2, :9] = 1
    normalized = sequence_logps(token_logps=token_logps, mask=mask, normalize=True).view(8, 2).double()
    closed = -F.logsigmoid(
        BETA / 5 * (token_logps[0::2, :5].sum(-1)) - BETA / 9 * (token_logps[1::2, :9].sum(-1)) - gamma
    )
    assert_close(simpo(policy_logps=normalized, beta=BETA, gamma=gamma), closed, rtol=1e-10, atol=1e-10)
    if gamma == 0.0:
        rewards = torch.tensor([[math.inf, 0.0]]).expand(8, 2)
        bwd = rpo_loss(
            policy_logps=normalized,
            ref_logps=torch.zeros_like(normalized),
            rewards=rewards,
            metric="bwd",
            beta=BETA,
            eta=1.0,
        )
        assert_close(simpo(policy_logps=normalized, beta=BETA, gamma=0.0), bwd, rtol=1e-10, atol=1e-10)


def test_kto_hand_worked():
    """beta=1. log-ratios: chosen 1.0, rejected -0.5. Mismatched pairs' log-ratios [0.2, 0.6] ->
    z0 = max(0, 0.4) = 0.4. loss = w_D (1 - sigma(1 - 0.4)) + w_U (1 - sigma(0.4 + 0.5))."""
    policy = torch.tensor([[1.0, -0.5]])
    ref = torch.zeros(1, 2)
    loss = kto(
        policy_logps=policy, ref_logps=ref, kl_policy_logps=torch.tensor([0.2, 0.6]), kl_ref_logps=torch.zeros(2),
        beta=1.0, desirable_weight=2.0, undesirable_weight=0.5,
    )  # fmt: skip
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert_close(loss, torch.tensor([2.0 * (1 - sig(0.6)) + 0.5 * (1 - sig(0.9))]))


def test_kto_reference_point_is_clamped_and_detached():
    policy = torch.tensor([[1.0, -0.5]])
    kl_policy = torch.tensor([-3.0, -1.0], requires_grad=True)  # negative mean log-ratio -> z0 = 0
    loss = kto(
        policy_logps=policy,
        ref_logps=torch.zeros(1, 2),
        kl_policy_logps=kl_policy,
        kl_ref_logps=torch.zeros(2),
        beta=1.0,
    )
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert_close(loss, torch.tensor([(1 - sig(1.0)) + (1 - sig(0.5))]))
    assert not loss.requires_grad  # no path from kl_policy: z0 is detached


def test_sft_nll_picks_best_response():
    policy = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]])
    rewards = torch.tensor([[0.0, 1.0, 0.5], [2.0, 1.0, 0.0]])
    assert_close(sft_nll(policy_logps=policy, rewards=rewards), torch.tensor([2.0, 4.0]))
    assert_close(sft_nll(policy_logps=policy, rewards=None), torch.tensor([1.0, 4.0]))


def test_sequence_logps_sum_and_mean():
    """tokens [-1, -2, -3] with mask [0, 1, 1]: sum -5, mean -2.5."""
    token_logps = torch.tensor([[-1.0, -2.0, -3.0]])
    mask = torch.tensor([[0, 1, 1]])
    assert_close(sequence_logps(token_logps=token_logps, mask=mask), torch.tensor([-5.0]))
    assert_close(sequence_logps(token_logps=token_logps, mask=mask, normalize=True), torch.tensor([-2.5]))


def _direct(name, policy, ref, rewards, kl):
    if name.startswith("rpo_"):
        return rpo_loss(
            policy_logps=policy, ref_logps=ref, rewards=rewards, metric=name[4:], beta=BETA, eta=2.0
        )
    return {
        "dpo": lambda: dpo(policy_logps=policy, ref_logps=ref, beta=BETA),
        "cdpo": lambda: cdpo(policy_logps=policy, ref_logps=ref, beta=BETA, label_smoothing=0.1),
        "ipo": lambda: ipo(policy_logps=policy, ref_logps=ref, beta=BETA),
        "distill_dpo": lambda: distill_dpo(
            policy_logps=policy, ref_logps=ref, rewards=rewards, beta=BETA, eta=2.0
        ),
        "simpo": lambda: simpo(policy_logps=policy, beta=BETA, gamma=0.3),
        "kto": lambda: kto(
            policy_logps=policy,
            ref_logps=ref,
            kl_policy_logps=kl,
            kl_ref_logps=torch.zeros_like(kl),
            beta=BETA,
        ),
        # NLL of the highest-reward response, written out here without sft_nll.
        "sft": lambda: -torch.where(rewards[:, 0] >= rewards[:, 1], policy[:, 0], policy[:, 1]),
        # Cross-entropy from softmax(eta r) to softmax(beta log pi/pi_ref), written out.
        "infonca": lambda: (
            -(torch.softmax(2.0 * rewards, -1) * torch.log_softmax(BETA * (policy - ref), -1)).sum(-1)
        ),
        # The listwise losses' K=2 forms (tests/unit/losses/test_listwise.py has their K=3 examples).
        "nca": lambda: (
            -(
                torch.softmax(2.0 * rewards, -1) * F.logsigmoid(BETA * (policy - ref))
                + 0.5 * F.logsigmoid(-BETA * (policy - ref))
            ).sum(-1)
        ),
        "plackett_luce": lambda: -F.logsigmoid(_winner_margin(policy, ref, rewards)),
        "lipo_lambda": lambda: (
            (2 ** (2.0 * rewards[:, 0]) - 2 ** (2.0 * rewards[:, 1])).abs()
            * (1 - 1 / math.log2(3))
            * -F.logsigmoid(_winner_margin(policy, ref, rewards))
        ),
    }[name]()


def _winner_margin(policy, ref, rewards):
    """beta (log-ratio of the higher-reward response - that of the other)."""
    sign = torch.sign(rewards[:, 0] - rewards[:, 1])
    return sign * BETA * ((policy[:, 0] - ref[:, 0]) - (policy[:, 1] - ref[:, 1]))


@pytest.mark.parametrize(
    "name", sorted(n for n in LOSSES if not LOSSES[n].token_level)
)  # those: test_token_level
def test_dispatch_runs_the_named_preset(name, pair):
    """Selecting a loss by name runs that loss, never a silent fallback to DPO."""
    policy, ref = pair
    rewards = torch.randn(32, 2, dtype=torch.float64)
    kl = torch.randn(32, dtype=torch.float64)
    ours = preference_loss(
        name, policy_logps=policy, ref_logps=ref, rewards=rewards, beta=BETA, eta=2.0,
        label_smoothing=0.1, gamma=0.3, kl_policy_logps=kl, kl_ref_logps=torch.zeros_like(kl),
        kto_desirable_weight=1.0, kto_undesirable_weight=1.0,
    )  # fmt: skip
    assert_close(ours, _direct(name, policy, ref, rewards, kl).to(ours.dtype))
    if name != "dpo":
        assert not torch.allclose(ours.double(), dpo(policy_logps=policy, ref_logps=ref, beta=BETA).double())


def test_aliases_and_unknown_names():
    assert canonical_name("rpo_bwd_kl") == "rpo_bwd"
    assert canonical_name("rpo_fwd_kl") == "rpo_fwd"
    assert canonical_name("rpo_sq") == "rpo_sq"
    with pytest.raises(ValueError, match="unknown loss 'sigmoid'"):
        canonical_name("sigmoid")


def test_pairwise_presets_reject_k_above_2():
    x = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="pairwise"):
        preference_loss("dpo", policy_logps=x, ref_logps=x, rewards=None, beta=0.1)
    with pytest.raises(ValueError, match="rpo_sqloo"):
        preference_loss("rpo_sq", policy_logps=x, ref_logps=x, rewards=x, beta=0.1)


def test_reward_presets_refuse_missing_rewards():
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="needs explicit rewards"):
        preference_loss("rpo_bwd", policy_logps=x, ref_logps=x, rewards=None, beta=0.1)
