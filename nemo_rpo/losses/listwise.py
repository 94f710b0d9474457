"""Listwise losses over the K responses of a prompt: NCA, Plackett–Luce, LiPO-λ (issue 21, item 2).

Each scores response k by its implicit reward ``a_k = beta log(pi(y_k|x) / pi_ref(y_k|x))`` (Eq. 3
without ``beta log Z(x)``) and reads the explicit rewards ``r*`` in its own way:

* ``nca``: a binary classifier per response against the target distribution ``softmax(eta r*)``. It
  fits ``a_k`` itself, not only its differences: it is *not* invariant to ``log Z`` (a per-prompt
  constant added to ``a``); its minimiser is ``a_k = log(K softmax(eta r*)_k)``.
* ``plackett_luce``: the likelihood of the ranking of ``r*`` under a Plackett–Luce model on ``a``;
  only the order of ``r*`` matters. Invariant to ``log Z``.
* ``lipo_lambda``: pairwise logistic losses, each weighted by how much swapping the pair changes
  the list's DCG (LambdaRank). Invariant to ``log Z``.

Every loss here is invariant to permuting the K responses together with their rewards.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import nemo_rpo.losses.presets  # noqa: F401 - the paper's losses register first and lead every listing
from nemo_rpo.losses.distances import target_log_softmax
from nemo_rpo.losses.registry import register_loss
from nemo_rpo.losses.rpo import implicit_rewards, scaled_targets


@register_loss("nca", needs_rewards=True, uses_reference=True, hparams=("beta", "eta"))
def nca(
    *, policy_logps: torch.Tensor, ref_logps: torch.Tensor, rewards: torch.Tensor, beta: float, eta: float
) -> torch.Tensor:
    """NCA (Chen et al., 2024, arXiv:2402.05369, the NCA loss for K responses with explicit rewards):

    ``-sum_k [ softmax(r*/alpha)_k log sigma(a_k) + 1/K log sigma(-a_k) ]``, ``eta = 1/alpha``.

    For K=2 with ``r* = [+inf, 0]`` this is the paper's pairwise NCA,
    ``-log sigma(a_w) - 1/2 log sigma(-a_w) - 1/2 log sigma(-a_l)``.

    Args:
        policy_logps, ref_logps, rewards: ``[B, K]``.

    Returns:
        ``[B]``. Setting ``d/da_k = 0`` gives the minimiser ``sigma(a_k) / sigma(-a_k) = K q^b_k``, i.e.
        ``a_k = log K + log softmax(eta r*)_k``: the absolute implicit reward is fitted, so a constant
        added to every ``a_k`` of a prompt changes the loss (no ``log Z`` invariance).
    """
    targets = scaled_targets(
        policy_logps=policy_logps, ref_logps=ref_logps, rewards=rewards, beta=beta, eta=eta
    )
    a = implicit_rewards(policy_logps=policy_logps, ref_logps=ref_logps.detach(), beta=beta)
    q = target_log_softmax(targets).exp()
    return -(q * F.logsigmoid(a) + F.logsigmoid(-a) / a.shape[-1]).sum(dim=-1)


@register_loss(
    "plackett_luce", needs_rewards=True, uses_reference=True, hparams=("beta",), aliases=("listmle",)
)
def plackett_luce(
    *, policy_logps: torch.Tensor, ref_logps: torch.Tensor, rewards: torch.Tensor, beta: float
) -> torch.Tensor:
    """Negative Plackett–Luce log-likelihood of the ranking of ``r*`` under the implicit rewards.

    DPO's listwise form (Rafailov et al., 2023, arXiv:2305.18290, Appendix A.3) and LiPO's
    ListMLE (Liu et al., 2024, arXiv:2402.01878): with ``tau`` the responses sorted by ``r*``, best
    first, ``-log prod_i exp(a_tau(i)) / sum_{j >= i} exp(a_tau(j))``
    ``= sum_i [logsumexp_{j >= i} a_tau(j) - a_tau(i)]``.

    Ties in ``r*`` (Breslow's rule, as in Cox's partial likelihood): the denominator of a response
    holds every response whose reward is at most its own, tied ones included, so the loss does not
    depend on how a tie is ordered. Without ties this is the formula above; for K=2 it is DPO.
    Only the order of ``r*`` enters (no ``eta``); ``+inf`` rewards rank first.

    Returns:
        ``[B]``.
    """
    scaled_targets(policy_logps=policy_logps, ref_logps=ref_logps, rewards=rewards, beta=beta, eta=1.0)
    a = implicit_rewards(policy_logps=policy_logps, ref_logps=ref_logps.detach(), beta=beta)
    r = rewards.detach()
    at_most = r.unsqueeze(-2) <= r.unsqueeze(-1)  # [B, i, j]: r_j <= r_i, the denominator of i
    denominators = torch.logsumexp(a.unsqueeze(-2).masked_fill(~at_most, -math.inf), dim=-1)
    return (denominators - a).sum(dim=-1)


def _ranks(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1-based rank of each response by ``scores`` (highest first); ties by ``labels`` (highest first),
    then by position. ``[B, K]`` -> ``[B, K]`` float."""
    s_i, s_j = scores.unsqueeze(-1), scores.unsqueeze(-2)
    l_i, l_j = labels.unsqueeze(-1), labels.unsqueeze(-2)
    k = scores.shape[-1]
    earlier = torch.ones(k, k, dtype=torch.bool, device=scores.device).tril(-1)  # [i, j]: j < i
    ahead = (s_j > s_i) | ((s_j == s_i) & ((l_j > l_i) | ((l_j == l_i) & earlier)))
    return 1.0 + ahead.sum(dim=-1).to(scores.dtype)


@register_loss(
    "lipo_lambda", needs_rewards=True, uses_reference=True, hparams=("beta", "eta"), aliases=("lipo",)
)
def lipo_lambda(
    *, policy_logps: torch.Tensor, ref_logps: torch.Tensor, rewards: torch.Tensor, beta: float, eta: float
) -> torch.Tensor:
    """LiPO-λ (Liu et al., 2024, arXiv:2402.01878, the LiPO-λ objective and its Lambda weight):

    ``-sum_{i,j: psi_i > psi_j} Delta_ij log sigma(s_i - s_j)`` with scores ``s = a`` (the implicit
    rewards), labels ``psi = eta r*`` and the Lambda weight
    ``Delta_ij = |G_i - G_j| |1/D(tau_i) - 1/D(tau_j)|``, gain ``G = 2^psi - 1``, discount
    ``D(tau) = log2(1 + tau)``, ``tau_i`` the rank of response i by the current (detached) scores.

    Score ties (every score is 0 at the first offline step, where pi = pi_ref) are broken by the
    labels, best first, so tied responses sit in their ideal order; the loss then does not depend on
    how the K responses are listed. For K=2 it is ``|2^psi_1 - 2^psi_2| (1 - 1/log2 3)`` times DPO.

    Raises:
        ValueError: infinite rewards (the gain ``2^psi`` would be infinite).

    Returns:
        ``[B]``.
    """
    psi = scaled_targets(policy_logps=policy_logps, ref_logps=ref_logps, rewards=rewards, beta=beta, eta=eta)
    if not torch.isfinite(psi).all():
        raise ValueError("lipo_lambda needs finite rewards (its gain 2^(eta r*) would be infinite)")
    s = implicit_rewards(policy_logps=policy_logps, ref_logps=ref_logps.detach(), beta=beta)
    gains = torch.exp2(psi)  # 2^psi - 1: the -1 cancels in |G_i - G_j|
    inverse_discounts = 1.0 / torch.log2(1.0 + _ranks(s.detach(), psi))
    weights = (gains.unsqueeze(-1) - gains.unsqueeze(-2)).abs() * (
        inverse_discounts.unsqueeze(-1) - inverse_discounts.unsqueeze(-2)
    ).abs()
    better = psi.unsqueeze(-1) > psi.unsqueeze(-2)  # [B, i, j]: psi_i > psi_j
    pair_losses = -F.logsigmoid(s.unsqueeze(-1) - s.unsqueeze(-2))
    return torch.where(better, weights * pair_losses, torch.zeros_like(pair_losses)).sum(dim=(-2, -1))
