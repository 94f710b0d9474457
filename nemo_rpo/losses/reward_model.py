"""Reward-model objectives: Bradley-Terry on ordered pairs, or regression onto the scalar rewards.

Pure torch. Both return *sums* and counts so the training layer can divide once by the global count
(megatron's ``calculate_per_token_loss``): the loss is then the exact mean over every pair (or
response) of the global batch, however it is split into micro-batches and data-parallel ranks.

Which pairs a prompt contributes: with rewards, every ``(i, j)`` with ``r_i > r_j`` (ties carry no
preference and are skipped), so K responses give up to ``K (K - 1) / 2`` pairs, as in InstructGPT's
RM training; without rewards (the trl format, K = 2) the data order is the preference, response 0 first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["bradley_terry_loss", "preference_pairs", "regression_loss"]


def preference_pairs(*, rewards: torch.Tensor | None, num_prompts: int, k: int) -> torch.Tensor:
    """``[B, K, K]`` bool, ``True`` at ``(b, i, j)`` when response ``i`` is preferred over ``j``.

    Args:
        rewards: ``[B, K]``, or None to take the data order as the preference (``i < j``).
        num_prompts: B (used when ``rewards`` is None).
        k: K (used when ``rewards`` is None).
    """
    if rewards is None:
        order = torch.ones(k, k, dtype=torch.bool).triu(diagonal=1)
        return order.expand(num_prompts, k, k)
    return rewards.unsqueeze(-1) > rewards.unsqueeze(-2)


def bradley_terry_loss(
    *, scores: torch.Tensor, rewards: torch.Tensor | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Summed Bradley-Terry negative log-likelihood ``sum_{i > j} -log sigmoid(s_i - s_j)``.

    ``P(i > j) = sigmoid(s_i - s_j)`` (Bradley & Terry 1952; Ouyang et al. 2022, eq. 1, which also
    averages over all K-choose-2 pairs of a prompt).

    Args:
        scores: ``[B, K]`` reward-model scores (fp32).
        rewards: ``[B, K]`` explicit rewards ordering the pairs, or None (data order).

    Returns:
        ``(loss_sum, stats)``: the scalar sum over pairs, and detached ``num_pairs`` and
        ``num_correct`` (pairs with ``s_i > s_j``; a tie counts as wrong).
    """
    num_prompts, k = scores.shape
    pairs = preference_pairs(rewards=rewards, num_prompts=num_prompts, k=k).to(scores.device)
    margins = scores.unsqueeze(-1) - scores.unsqueeze(-2)  # [B, K, K]: s_i - s_j
    nll = F.softplus(-margins)  # -log sigmoid(m), stable for large |m|
    loss_sum = torch.where(pairs, nll, torch.zeros_like(nll)).sum()
    stats = {
        "num_pairs": pairs.sum().to(torch.float32),
        "num_correct": (pairs & (margins.detach() > 0)).sum().to(torch.float32),
    }
    return loss_sum, stats


def regression_loss(
    *, scores: torch.Tensor, rewards: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Summed squared error ``sum_{b, i} (s_bi - r_bi)^2`` and the same pairwise stats as Bradley-Terry.

    Args:
        scores: ``[B, K]`` reward-model scores (fp32).
        rewards: ``[B, K]`` target rewards.

    Returns:
        ``(loss_sum, stats)`` with detached ``num_responses``, ``num_pairs`` and ``num_correct``.
    """
    loss_sum = (scores - rewards.to(scores.dtype)).square().sum()
    _, stats = bradley_terry_loss(scores=scores.detach(), rewards=rewards)
    stats["num_responses"] = torch.tensor(float(scores.numel()), device=scores.device)
    return loss_sum, stats
