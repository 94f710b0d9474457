"""Token-level RPO (docs/token_level.md): the derivation's reduction to sequence-level RPO, its log Z
(start-state value) invariance, K-permutation invariance, a hand-worked example and gradcheck."""

import math

import pytest
import torch
from torch.testing import assert_close

from nemo_rpo.losses import LOSSES, preference_loss, rpo_loss, token_rpo_loss
from nemo_rpo.losses.logps import response_token_logps
from nemo_rpo.losses.token_level import depth_weights

F64 = torch.float64
LN2, LN3 = math.log(2.0), math.log(3.0)


def _tokens(b=5, k=4, length=7, seed=0):
    """Per-token policy/ref log-probs ``[B, K, L]`` with lengths 1..L (garbage past the end), rewards."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (b, k), generator=g)
    mask = torch.arange(length) < lengths.unsqueeze(-1)
    policy = -torch.rand(b, k, length, dtype=F64, generator=g) * 3
    ref = -torch.rand(b, k, length, dtype=F64, generator=g) * 3
    policy, ref = torch.where(mask, policy, 5.0), torch.where(mask, ref, -9.0)  # past the end: ignored
    rewards = torch.rand(b, k, dtype=F64, generator=g)
    return policy, ref, rewards, mask


def _sequence(x, mask):
    return torch.where(mask, x, torch.zeros_like(x)).sum(-1)


@pytest.mark.parametrize("metric", ["bwd", "sqloo", "fwd"])
@pytest.mark.parametrize("k", [2, 4])
def test_decay_0_is_sequence_level_rpo(metric, k):
    """token_decay = 0 keeps only the depth T, where the prefix sums are the sequence log-ratios:
    values and gradients equal rpo_loss on the summed log-probs (float64, 1e-12)."""
    policy, ref, rewards, mask = _tokens(k=k)
    kw = {"ref_logps": ref, "rewards": rewards, "token_mask": mask, "beta": 0.3, "eta": 2.0}
    leaf = policy.clone().requires_grad_(True)
    tok = token_rpo_loss(policy_logps=leaf, **kw, metric=metric, token_decay=0.0)
    (tok_grad,) = torch.autograd.grad(tok.sum(), leaf)
    seq_leaf = _sequence(policy, mask).requires_grad_(True)
    seq = rpo_loss(policy_logps=seq_leaf, ref_logps=_sequence(ref, mask), rewards=rewards, metric=metric,
                   beta=0.3, eta=2.0)  # fmt: skip
    (seq_grad,) = torch.autograd.grad(seq.sum(), seq_leaf)
    assert_close(tok, seq, rtol=1e-12, atol=1e-12)
    # Every token of response k gets the sequence-level scale S_k of Eq. 8.
    expected = torch.where(mask, seq_grad.unsqueeze(-1).expand_as(policy), torch.zeros_like(policy))
    assert_close(tok_grad, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("decay", [0.0, 0.5, 1.0])
def test_one_token_responses_are_sequence_level_for_any_decay(decay):
    policy, ref, rewards, _ = _tokens(length=1)
    mask = torch.ones_like(policy, dtype=torch.bool)
    tok = token_rpo_loss(policy_logps=policy, ref_logps=ref, rewards=rewards, token_mask=mask, metric="bwd",
                         beta=0.3, eta=2.0, token_decay=decay)  # fmt: skip
    seq = rpo_loss(policy_logps=policy[..., 0], ref_logps=ref[..., 0], rewards=rewards, metric="bwd", beta=0.3,
                   eta=2.0)  # fmt: skip
    assert_close(tok, seq, rtol=1e-12, atol=1e-12)


def test_hand_worked_credit():
    """K=2, beta=1, eta=1, rewards equal (target p = 1/2); response 1 has 2 tokens, response 2 one.
    decay=1: weights 1/2 on depths 1 and 2. bwd on K=2 is KL[Bern(1/2) || Bern(sigma(m))] on the margin m:
    D(0) = 0, D(ln 3) = -1/2 ln(3/4) - 1/2 ln(1/4) - ln 2 = ln 2 - 1/2 ln 3 = 0.143841; dD/dm = sigma(m) - 1/2.

    (a) a = [[0, ln 3], [0]]: margins m(1) = 0, m(2) = ln 3: L = 1/2 * 0.143841;
        grads: a11, a12 get 1/2 * 1/4 (only depth 2 sees them differ), a21 gets -1/8.
    (b) a = [[ln 3, 0], [0]]: the first token carries the difference, m(1) = m(2) = ln 3: L = 0.143841;
        a11 gets 1/2 (1/4 + 1/4) = 1/4, a12 gets 1/8, a21 -1/4.
    Sequence-level RPO (decay 0) cannot tell (a) from (b): 0.143841, grads [1/4, 1/4, -1/4] for both.
    """
    mask = torch.tensor([[[True, True], [True, False]]])
    rewards = torch.zeros(1, 2, dtype=F64)
    d = LN2 - 0.5 * LN3
    for a, loss_1, grad_1 in (
        ([[0.0, LN3], [0.0, 0.0]], 0.5 * d, [[1 / 8, 1 / 8], [-1 / 8, 0.0]]),
        ([[LN3, 0.0], [0.0, 0.0]], d, [[1 / 4, 1 / 8], [-1 / 4, 0.0]]),
    ):
        ref = torch.full((1, 2, 2), -2.0, dtype=F64)
        for decay, want, want_grad in ((1.0, loss_1, grad_1), (0.0, d, [[1 / 4, 1 / 4], [-1 / 4, 0.0]])):
            policy = (ref + torch.tensor([a], dtype=F64)).requires_grad_(True)
            loss = preference_loss("rpo_token_bwd", policy_logps=policy, ref_logps=ref, rewards=rewards,
                                   token_mask=mask, beta=1.0, eta=1.0, token_decay=decay)  # fmt: skip
            (grad,) = torch.autograd.grad(loss.sum(), policy)
            assert_close(loss, torch.tensor([want], dtype=F64))
            assert_close(grad, torch.tensor([want_grad], dtype=F64))
    assert abs(d - 0.143841) < 1e-6


@pytest.mark.parametrize("name", ["rpo_token_bwd", "rpo_token_sqloo"])
def test_log_z_is_the_start_state_value(name):
    """beta log Z(x) = V*(x) sits on the first token of every response: a per-prompt constant there
    changes nothing (any decay). The same constant on every token shifts prefix sums by c * t, which is
    not a per-prompt constant once lengths differ, and does change the loss."""
    policy, ref, rewards, mask = _tokens()
    kw = {
        "ref_logps": ref,
        "rewards": rewards,
        "token_mask": mask,
        "beta": 0.3,
        "eta": 2.0,
        "token_decay": 0.8,
    }
    base = preference_loss(name, policy_logps=policy, **kw)
    shift = torch.zeros_like(policy)
    shift[..., 0] = torch.tensor([-3.0, 0.5, 7.0, 1.5, -0.2]).view(5, 1)
    assert_close(preference_loss(name, policy_logps=policy + shift, **kw), base, rtol=1e-12, atol=1e-12)
    moved = preference_loss(name, policy_logps=policy + 0.5, **kw)
    assert (moved - base).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["rpo_token_bwd", "rpo_token_sqloo"])
def test_permuting_responses_with_their_rewards_changes_nothing(name):
    policy, ref, rewards, mask = _tokens()
    hp = {"beta": 0.3, "eta": 2.0, "token_decay": 0.7}
    base = preference_loss(name, policy_logps=policy, ref_logps=ref, rewards=rewards, token_mask=mask, **hp)
    perm = torch.tensor([2, 0, 3, 1])
    permuted = preference_loss(name, policy_logps=policy[:, perm], ref_logps=ref[:, perm],
                               rewards=rewards[:, perm], token_mask=mask[:, perm], **hp)  # fmt: skip
    assert_close(permuted, base, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["rpo_token_bwd", "rpo_token_sqloo"])
def test_gradcheck_float64(name):
    policy, ref, rewards, mask = _tokens(b=2, k=3, length=4, seed=3)

    def fn(p):
        return preference_loss(name, policy_logps=p, ref_logps=ref, rewards=rewards, token_mask=mask,
                               beta=0.3, eta=2.0, token_decay=0.6)  # fmt: skip

    assert torch.autograd.gradcheck(fn, (policy.clone().requires_grad_(True),), eps=1e-6, atol=1e-8)


def test_depth_weights():
    """T = 3 (the longest response): decay 0.5 gives [1/4, 1/2, 1] / 7/4 = [1/7, 2/7, 4/7], 0 past T."""
    mask = torch.tensor([[[1, 1, 0, 0], [1, 1, 1, 0]]]).bool()
    assert_close(depth_weights(mask, 0.5), torch.tensor([[1 / 7, 2 / 7, 4 / 7, 0.0]], dtype=F64))
    assert_close(depth_weights(mask, 0.0), torch.tensor([[0.0, 0.0, 1.0, 0.0]], dtype=F64))
    with pytest.raises(ValueError, match="token_decay must be in"):
        depth_weights(mask, 1.5)


def test_response_token_logps_left_aligns_and_keeps_gradients():
    token_logps = torch.tensor([[9.0, -1.0, -2.0, 9.0], [-3.0, 9.0, 9.0, 9.0]], requires_grad=True)
    mask = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 0]])
    out = response_token_logps(token_logps=token_logps, mask=mask, width=3)
    assert_close(out, torch.tensor([[-1.0, -2.0, 0.0], [-3.0, 0.0, 0.0]]))
    out.sum().backward()
    assert_close(token_logps.grad, mask.float())
    with pytest.raises(ValueError, match="more than width=1"):
        response_token_logps(token_logps=token_logps, mask=mask, width=1)


def test_declared_and_checked():
    spec = LOSSES["rpo_token_bwd"]
    assert spec.token_level and spec.inputs == ("policy_logps", "ref_logps", "rewards", "token_mask")
    x = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match="needs per-token log-probs and their token_mask"):
        preference_loss("rpo_token_bwd", policy_logps=x, ref_logps=x, rewards=torch.zeros(2, 3), beta=0.1,
                        eta=1.0, token_decay=0.5)  # fmt: skip
