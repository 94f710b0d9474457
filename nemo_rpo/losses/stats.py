"""Detached diagnostics reported beside the loss, in forms that reduce exactly across micro-batches.

Each function returns sums and counts (not means) so the training layer can add them over
micro-batches and data-parallel ranks before dividing once.
"""

from __future__ import annotations

import torch

from nemo_rpo.losses.distances import target_log_softmax
from nemo_rpo.losses.rpo import implicit_rewards, upcast

STAT_KEYS = ("acc_sum", "acc_count", "sx", "sy", "sxx", "syy", "sxy", "n")


@torch.no_grad()
def ranking_agreement(*, implicit: torch.Tensor, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs (i, j) of a row with ``r*_i != r*_j`` ordered the same way by the implicit rewards.

    Returns ``(agree_sum [B], num_pairs [B])``; an implicit tie counts one half.
    """
    d_implicit = implicit.unsqueeze(-1) - implicit.unsqueeze(-2)
    d_reward = rewards.unsqueeze(-1) - rewards.unsqueeze(-2)
    upper = torch.ones_like(d_reward, dtype=torch.bool).triu(diagonal=1)
    strict = (rewards.unsqueeze(-1) != rewards.unsqueeze(-2)) & upper
    agree = torch.where(d_implicit == 0, 0.5, ((d_implicit > 0) == (d_reward > 0)).float())
    agree = torch.where(strict, agree, torch.zeros_like(agree))
    return agree.sum(dim=(-1, -2)), strict.sum(dim=(-1, -2)).float()


@torch.no_grad()
def centered_moments(*, implicit: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sufficient statistics ``[sx, sy, sxx, syy, sxy, n]`` for the Pearson correlation between
    implicit and explicit rewards, each centered within its row (removing ``log Z(x)``).

    Rows with a non-finite target are left out.
    """
    finite = torch.isfinite(targets).all(dim=-1)
    x = implicit[finite]
    y = targets[finite]
    x = (x - x.mean(dim=-1, keepdim=True)).flatten()
    y = (y - y.mean(dim=-1, keepdim=True)).flatten()
    n = torch.tensor(float(x.numel()), device=implicit.device)
    return torch.stack([x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum(), n])


def pearson_from_moments(moments: torch.Tensor) -> float:
    """Pearson correlation from :func:`centered_moments` (summed over batches); NaN when undefined."""
    sx, sy, sxx, syy, sxy, n = (float(v) for v in moments)
    if n < 2:
        return float("nan")
    cov = sxy - sx * sy / n
    var_x = sxx - sx * sx / n
    var_y = syy - sy * sy / n
    if var_x <= 0 or var_y <= 0:
        return float("nan")
    return cov / (var_x * var_y) ** 0.5


@torch.no_grad()
def rpo_stats(
    *, policy_logps: torch.Tensor, ref_logps: torch.Tensor, rewards: torch.Tensor, beta: float, eta: float
) -> dict[str, torch.Tensor]:
    """Implicit rewards, target/policy probabilities, ranking agreement and correlation moments.

    Args:
        policy_logps, ref_logps, rewards: ``[B, K]``.

    Returns:
        ``implicit_rewards [B, K]``, ``target_probs [B, K]`` (softmax of ``eta r*``), ``policy_probs
        [B, K]`` (softmax of the implicit rewards), ``acc_sum [B]``, ``acc_count [B]`` and
        ``moments [6]`` (see :func:`centered_moments`).
    """
    implicit = implicit_rewards(policy_logps=policy_logps.detach(), ref_logps=ref_logps.detach(), beta=beta)
    targets = eta * upcast(rewards)
    acc_sum, acc_count = ranking_agreement(implicit=implicit, rewards=upcast(rewards))
    return {
        "implicit_rewards": implicit,
        "target_probs": target_log_softmax(targets).exp(),
        "policy_probs": torch.softmax(implicit, dim=-1),
        "acc_sum": acc_sum,
        "acc_count": acc_count,
        "moments": centered_moments(implicit=implicit, targets=targets),
    }
