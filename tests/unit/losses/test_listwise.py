"""Listwise presets over K responses (issue 21): NCA, Plackett–Luce, LiPO-λ.

Each loss has a K=3 example worked by hand (in its docstring, the numbers re-typed from it), its K=2
special case, K-permutation invariance, the ``log Z`` property it has (Plackett–Luce, LiPO-λ: a
per-prompt constant added to the implicit rewards changes nothing; NCA: it does, and its minimiser
``a_k = log(K softmax(eta r*)_k)`` is what holds instead), and a float64 ``gradcheck``.
"""

import math

import pytest
import torch
from torch.testing import assert_close

from nemo_rpo.losses import LOSSES, preference_loss

LISTWISE = ("nca", "plackett_luce", "lipo_lambda")
LN2, LN3 = math.log(2.0), math.log(3.0)
F64 = torch.float64


def _loss_and_grad(name, a, rewards, beta=1.0, eta=1.0):
    """Loss and d loss / d policy_logps at implicit rewards ``a`` (policy = ref + a / beta)."""
    ref = torch.tensor([[-5.0, -7.0, -6.0]], dtype=F64)[:, : a.shape[-1]]
    policy = (ref + a / beta).requires_grad_(True)
    hp = {"beta": beta, "eta": eta} if "eta" in LOSSES[name].hparams else {"beta": beta}
    loss = preference_loss(name, policy_logps=policy, ref_logps=ref, rewards=rewards, **hp)
    (grad,) = torch.autograd.grad(loss.sum(), policy)
    return loss.detach(), grad


def test_nca_hand_worked():
    """K=3, beta=1, eta=1; a = [ln 3, 0, -ln 3], rewards [ln 2, 0, 0] so q = softmax(r) = [1/2, 1/4, 1/4].

    sigma(a) = [3/4, 1/2, 1/4], sigma(-a) = [1/4, 1/2, 3/4].
    sum_k q_k log sigma(a_k) = 1/2 ln(3/4) - 1/4 ln 2 + 1/4 ln(1/4) = 1/2 ln 3 - 7/4 ln 2.
    1/3 sum_k log sigma(-a_k) = 1/3 (ln(1/4) - ln 2 + ln(3/4)) = 1/3 (ln 3 - 5 ln 2).
    NCA = -(both) = 41/12 ln 2 - 5/6 ln 3 = 1.452743.
    dL/da_k = -q_k sigma(-a_k) + sigma(a_k)/3 = [-1/8 + 1/4, -1/8 + 1/6, -3/16 + 1/12] = [1/8, 1/24, -5/48].
    """
    a = torch.tensor([[LN3, 0.0, -LN3]], dtype=F64)
    loss, grad = _loss_and_grad("nca", a, torch.tensor([[LN2, 0.0, 0.0]], dtype=F64))
    assert_close(loss, torch.tensor([41 / 12 * LN2 - 5 / 6 * LN3], dtype=F64))
    assert abs(loss.item() - 1.452743) < 1e-6
    assert_close(grad, torch.tensor([[1 / 8, 1 / 24, -5 / 48]], dtype=F64))


def test_plackett_luce_hand_worked():
    """K=3, beta=1; a = [0, ln 2, 0], rewards [0.2, 0.9, 0.5]: the ranking is response 2, 3, 1.

    L = [ln(e^{ln 2} + e^0 + e^0) - ln 2] + [ln(e^0 + e^0) - 0] + [a_1 - a_1] = (ln 4 - ln 2) + ln 2 = 2 ln 2.
    dL/da: the first term gives softmax over {2,3,1} minus one-hot(2) = [1/4, 1/2 - 1, 1/4];
    the second softmax over {3,1} minus one-hot(3) = [1/2, 0, -1/2]; total [3/4, -1/2, -1/4].
    """
    a = torch.tensor([[0.0, LN2, 0.0]], dtype=F64)
    loss, grad = _loss_and_grad("plackett_luce", a, torch.tensor([[0.2, 0.9, 0.5]], dtype=F64))
    assert_close(loss, torch.tensor([2 * LN2], dtype=F64))
    assert_close(grad, torch.tensor([[3 / 4, -1 / 2, -1 / 4]], dtype=F64))


def test_plackett_luce_ties_follow_breslow():
    """Rewards [0.5, 0.9, 0.5] (responses 1 and 3 tied), a = [0, ln 2, 0]. Breslow: each tied response's
    denominator holds both of them: (ln 4 - ln 2) + (ln 2 - 0) + (ln 2 - 0) = 3 ln 2 (a strict order of the
    tie would give 2 ln 2 here, and with unequal a_1, a_3 a value that depends on which way it is listed)."""
    a = torch.tensor([[0.0, LN2, 0.0]], dtype=F64)
    loss, _ = _loss_and_grad("plackett_luce", a, torch.tensor([[0.5, 0.9, 0.5]], dtype=F64))
    assert_close(loss, torch.tensor([3 * LN2], dtype=F64))


def test_lipo_lambda_hand_worked():
    """K=3, beta=1, eta=1; s = a = [ln 3, 0, -ln 3], labels psi = r* = [1, 0, 2].

    Ranks by s: [1, 2, 3]; 1/D = 1/log2(1 + rank) = [1, 1/log2 3, 1/2]. Gains 2^psi (-1 cancels) = [2, 1, 4].
    Pairs with psi_i > psi_j, their weight Delta = |G_i - G_j| |1/D_i - 1/D_j| and -log sigma(s_i - s_j):
      (1,2): 1 * (1 - 1/log2 3) = 0.369070,  s_1 - s_2 = ln 3,    -log(3/4)  = ln(4/3)
      (3,1): 2 * (1 - 1/2)      = 1,         s_3 - s_1 = -2 ln 3, -log(1/10) = ln 10
      (3,2): 3 * (1/log2 3 - 1/2) = 0.392789, s_3 - s_2 = -ln 3,  -log(1/4)  = ln 4
    L = 0.369070 ln(4/3) + ln 10 + 0.392789 ln 4 = 2.953282.
    dL/ds_i = -Delta (1 - sigma(s_i - s_j)), dL/ds_j = +the same, with 1 - sigma = 1/4, 9/10, 3/4:
    [-D12/4 + 9/10, D12/4 + 3/4 D32, -9/10 - 3/4 D32].
    """
    d12, d32 = 1 - 1 / math.log2(3), 3 * (1 / math.log2(3) - 0.5)
    a = torch.tensor([[LN3, 0.0, -LN3]], dtype=F64)
    loss, grad = _loss_and_grad("lipo_lambda", a, torch.tensor([[1.0, 0.0, 2.0]], dtype=F64))
    expected = d12 * math.log(4 / 3) + math.log(10) + d32 * math.log(4)
    assert_close(loss, torch.tensor([expected], dtype=F64))
    assert abs(loss.item() - 2.953282) < 1e-6
    assert_close(grad, torch.tensor([[-d12 / 4 + 0.9, d12 / 4 + 0.75 * d32, -0.9 - 0.75 * d32]], dtype=F64))


def test_lipo_lambda_score_ties_take_the_ideal_order():
    """At pi = pi_ref every score is 0: ranks follow the labels [1, 0, 2] -> [2, 3, 1], so
    Delta_12 = 1 * (1/log2 3 - 1/2), Delta_31 = 2 * (1 - 1/log2 3), Delta_32 = 3 * (1 - 1/2), each pair
    costs ln 2 and the gradient is nonzero (average ranks would give Delta = 0: no first step)."""
    a = torch.zeros(1, 3, dtype=F64)
    loss, grad = _loss_and_grad("lipo_lambda", a, torch.tensor([[1.0, 0.0, 2.0]], dtype=F64))
    inv3 = 1 / math.log2(3)
    assert_close(loss, torch.tensor([((inv3 - 0.5) + 2 * (1 - inv3) + 1.5) * LN2], dtype=F64))
    assert grad.abs().min() > 0.1


def test_k2_special_cases():
    """K=2: Plackett–Luce is DPO; LiPO-λ is |2^psi_1 - 2^psi_2| (1 - 1/log2 3) times DPO; NCA with
    r* = [+inf, 0] is the paper's pairwise NCA: -log sigma(a_w) - 1/2 log sigma(-a_w) - 1/2 log sigma(-a_l)."""
    torch.manual_seed(0)
    policy, ref = torch.randn(8, 2, dtype=F64), torch.randn(8, 2, dtype=F64)
    rewards = torch.stack([torch.rand(8, dtype=F64) + 1, torch.rand(8, dtype=F64)], dim=-1)  # r_1 > r_2
    kw = {"policy_logps": policy, "ref_logps": ref, "rewards": rewards, "beta": 0.5}
    dpo = preference_loss("dpo", policy_logps=policy, ref_logps=ref, beta=0.5)
    assert_close(preference_loss("plackett_luce", **kw), dpo)
    weight = (2 ** rewards[:, 0] - 2 ** rewards[:, 1]) * (1 - 1 / math.log2(3))
    assert_close(preference_loss("lipo_lambda", **kw, eta=1.0), weight * dpo)
    a = 0.5 * (policy - ref)
    inf_rewards = torch.tensor([[math.inf, 0.0]], dtype=F64).expand(8, 2)
    nca = preference_loss("nca", **{**kw, "rewards": inf_rewards}, eta=1.0)
    logsig = torch.nn.functional.logsigmoid
    assert_close(nca, -logsig(a[:, 0]) - 0.5 * logsig(-a[:, 0]) - 0.5 * logsig(-a[:, 1]))


def _inputs(k=4, b=6, seed=0, ties=True):
    g = torch.Generator().manual_seed(seed)
    policy = torch.randn(b, k, dtype=F64, generator=g) * 2
    ref = torch.randn(b, k, dtype=F64, generator=g) * 2
    rewards = torch.rand(b, k, dtype=F64, generator=g)
    if ties:  # the embedded data has ties in 174 of 512 rows
        rewards = (rewards * 3).round() / 3
    return policy, ref, rewards


def _hparams(name):
    return {"beta": 0.3, "eta": 2.0} if "eta" in LOSSES[name].hparams else {"beta": 0.3}


@pytest.mark.parametrize("name", LISTWISE)
@pytest.mark.parametrize("ties", [False, True])
def test_permuting_responses_with_their_rewards_changes_nothing(name, ties):
    policy, ref, rewards = _inputs(ties=ties)
    base = preference_loss(name, policy_logps=policy, ref_logps=ref, rewards=rewards, **_hparams(name))
    for seed in range(3):
        perm = torch.randperm(4, generator=torch.Generator().manual_seed(seed))
        permuted = preference_loss(
            name,
            policy_logps=policy[:, perm],
            ref_logps=ref[:, perm],
            rewards=rewards[:, perm],
            **_hparams(name),
        )
        assert_close(permuted, base, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["plackett_luce", "lipo_lambda"])
def test_log_z_invariance(name):
    """A per-prompt constant added to log pi (hence to every implicit reward of the prompt) changes nothing."""
    policy, ref, rewards = _inputs()
    shift = torch.tensor([[-3.0], [0.5], [7.0], [1e-3], [-0.25], [2.0]], dtype=F64)
    kw = {"ref_logps": ref, "rewards": rewards, **_hparams(name)}
    base = preference_loss(name, policy_logps=policy, **kw)
    assert_close(preference_loss(name, policy_logps=policy + shift, **kw), base, rtol=1e-12, atol=1e-12)


def test_nca_is_not_log_z_invariant_and_has_its_closed_form_minimiser():
    """NCA fits a_k itself: at a_k = log(K softmax(eta r*)_k) its gradient vanishes, and shifting every
    a_k of the prompt by a constant (log Z) raises the loss."""
    _, ref, rewards = _inputs(ties=False)
    beta, eta = 0.3, 2.0
    best = torch.log(4 * torch.softmax(eta * rewards, dim=-1))
    policy = (ref + best / beta).requires_grad_(True)
    loss = preference_loss("nca", policy_logps=policy, ref_logps=ref, rewards=rewards, beta=beta, eta=eta)
    (grad,) = torch.autograd.grad(loss.sum(), policy)
    assert_close(grad, torch.zeros_like(grad), atol=1e-12, rtol=0)
    for shift in (-1.0, 0.5, 2.0):
        shifted = preference_loss(
            "nca",
            policy_logps=policy.detach() + shift / beta,
            ref_logps=ref,
            rewards=rewards,
            beta=beta,
            eta=eta,
        )
        assert (shifted > loss.detach() + 1e-3).all()


def test_reward_transformations_each_loss_ignores():
    """NCA and Plackett–Luce: a per-prompt constant added to r* changes nothing; Plackett–Luce also
    ignores any increasing transform; LiPO-λ's gains 2^(eta r*) scale its loss by 2^(eta c) instead."""
    policy, ref, rewards = _inputs()
    kw = {"policy_logps": policy, "ref_logps": ref}
    c = torch.tensor([[0.7], [-1.0], [0.0], [2.0], [0.1], [-0.3]], dtype=F64)
    for name in ("nca", "plackett_luce"):
        base = preference_loss(name, **kw, rewards=rewards, **_hparams(name))
        assert_close(
            preference_loss(name, **kw, rewards=rewards + c, **_hparams(name)), base, rtol=1e-12, atol=0
        )
    pl = preference_loss("plackett_luce", **kw, rewards=rewards, beta=0.3)
    assert_close(preference_loss("plackett_luce", **kw, rewards=torch.exp(5 * rewards), beta=0.3), pl)
    lipo = preference_loss("lipo_lambda", **kw, rewards=rewards, beta=0.3, eta=2.0)
    shifted = preference_loss("lipo_lambda", **kw, rewards=rewards + c, beta=0.3, eta=2.0)
    assert_close(shifted, lipo * 2 ** (2.0 * c.squeeze(-1)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", LISTWISE)
def test_gradcheck_float64(name):
    policy, ref, rewards = _inputs(k=4, b=3, seed=5)

    def fn(p):
        return preference_loss(name, policy_logps=p, ref_logps=ref, rewards=rewards, **_hparams(name))

    assert torch.autograd.gradcheck(fn, (policy.clone().requires_grad_(True),), eps=1e-6, atol=1e-8)


def test_lipo_lambda_rejects_infinite_rewards():
    x = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="lipo_lambda needs finite rewards"):
        preference_loss("lipo_lambda", policy_logps=x, ref_logps=x, rewards=torch.tensor([[math.inf, 0, 1]]),
                        beta=0.1, eta=1.0)  # fmt: skip


@pytest.mark.parametrize("name", LISTWISE)
def test_declared_inputs(name):
    spec = LOSSES[name]
    assert (spec.needs_rewards, spec.uses_reference, spec.pairwise, spec.token_level) == (
        True,
        True,
        False,
        False,
    )
