"""The paper's distance metrics D[a || b] between implicit rewards ``a`` and target rewards ``b``.

Every function takes ``a`` and ``b`` of shape ``[B, K]`` (K responses of one prompt per row, fp32)
and returns the per-row distance ``[B]``. ``a = beta * log(pi / pi_ref)`` and ``b = eta * r*``.
Each metric is invariant to a per-row constant added to ``a`` (the ``beta * log Z(x)`` of Eq. 3).

``b`` may hold ``+inf`` entries: the response is infinitely preferred (DPO's ``delta_r* = inf``).
Target distributions then put their mass on the ``+inf`` entries exactly, never via a large constant.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def target_log_softmax(b: torch.Tensor) -> torch.Tensor:
    """log softmax over the last dim that is exact when entries are +inf.

    A row with m entries equal to +inf puts probability 1/m on each of them and 0 elsewhere
    (the limit of ``softmax(b)`` as those entries grow). ``-inf`` entries get probability 0.
    """
    is_pos_inf = torch.isposinf(b)
    num_pos_inf = is_pos_inf.sum(dim=-1, keepdim=True)
    finite_b = torch.where(is_pos_inf, torch.zeros_like(b), b)
    ordinary = torch.log_softmax(finite_b, dim=-1)
    degenerate = torch.where(is_pos_inf, -torch.log(num_pos_inf.clamp(min=1).to(b.dtype)), -torch.inf)
    return torch.where(num_pos_inf > 0, degenerate, ordinary)


def reward_margin(b: torch.Tensor) -> torch.Tensor:
    """``b[:, 0] - b[:, 1]``, with two equal infinities read as a tie (margin 0), as softmax does."""
    same_inf = torch.isinf(b[:, 0]) & (b[:, 0] == b[:, 1])
    return torch.where(same_inf, torch.zeros_like(b[:, 0]), b[:, 0] - b[:, 1])


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """sum_i p_i (log p_i - log q_i) over the last dim with 0 * log 0 = 0 (values and gradients)."""
    p = log_p.exp()
    safe_log_p = torch.where(p > 0, log_p, torch.zeros_like(log_p))
    return (p * (safe_log_p - log_q)).sum(dim=-1)


def _bernoulli_log_probs(margin: torch.Tensor) -> torch.Tensor:
    """[log sigma(m), log sigma(-m)]: the Bernoulli p_m of §3.2 as a 2-way log distribution."""
    return torch.stack([F.logsigmoid(margin), F.logsigmoid(-margin)], dim=-1)


def sq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared distance on the K=2 margin (§3.2): 1/2 ((a1 - a2) - (b1 - b2))^2."""
    if a.shape[-1] != 2:
        raise ValueError(
            f"metric 'sq' is defined on the K=2 margin, got K={a.shape[-1]}; use 'sqloo' for K > 2"
        )
    return 0.5 * ((a[:, 0] - a[:, 1]) - reward_margin(b)) ** 2


def sqloo(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared distance with leave-one-out centering (Eq. 6): 1/2 sum_k (a^_k - b^_k)^2.

    ``a^_k = a_k - mean_{j != k} a_j = K/(K-1) (a_k - mean(a))``.
    """
    k = a.shape[-1]
    scale = k / (k - 1)
    a_hat = scale * (a - a.mean(dim=-1, keepdim=True))
    b_hat = scale * (b - b.mean(dim=-1, keepdim=True))
    return 0.5 * ((a_hat - b_hat) ** 2).sum(dim=-1)


def bwd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Backward KL, KL[q^b || q^a]: Bernoulli on the margin for K=2 (§3.2, Eq. 13), categorical (Eq. 7)."""
    if a.shape[-1] == 2:
        return bwd_bernoulli(a, b)
    return bwd_categorical(a, b)


def fwd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Forward KL, KL[q^a || q^b] (Appendix A; the paper's Eq. 10 repeats Eq. 7 by mistake)."""
    if a.shape[-1] == 2:
        return _kl(_bernoulli_log_probs(a[:, 0] - a[:, 1]), _bernoulli_log_probs(reward_margin(b)))
    return _kl(torch.log_softmax(a, dim=-1), target_log_softmax(b))


def bwd_bernoulli(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """KL[p_{b1-b2} || p_{a1-a2}] between Bernoulli distributions on the K=2 margins (Eq. 13)."""
    # logsigmoid is exact at +-inf, so an infinite target margin needs no special case.
    return _kl(_bernoulli_log_probs(reward_margin(b)), _bernoulli_log_probs(a[:, 0] - a[:, 1]))


def bwd_categorical(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """KL[q^b || q^a] with q = softmax over the K responses (Eq. 7)."""
    return _kl(target_log_softmax(b), torch.log_softmax(a, dim=-1))


DISTANCES = {"sq": sq, "sqloo": sqloo, "bwd": bwd, "fwd": fwd}
