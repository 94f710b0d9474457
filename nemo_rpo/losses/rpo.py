"""The RPO objective (Eq. 4 for K=2, Eq. 5 for K responses)."""

from __future__ import annotations

import torch

from nemo_rpo.losses.distances import DISTANCES

METRICS = tuple(DISTANCES)


def upcast(x: torch.Tensor) -> torch.Tensor:
    """At least fp32 (bf16/fp16 inputs are computed in fp32; fp64 stays fp64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def implicit_rewards(*, policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """``beta * log(pi / pi_ref)`` per response (Eq. 3 without the ``beta log Z`` that every metric cancels)."""
    return beta * (upcast(policy_logps) - upcast(ref_logps))


def scaled_targets(
    *, policy_logps: torch.Tensor, ref_logps: torch.Tensor, rewards: torch.Tensor, beta: float, eta: float
) -> torch.Tensor:
    """Check the inputs of a reward-target loss; return the detached targets ``eta * r*`` (at least fp32).

    Raises:
        ValueError: inputs that are not one ``[B, K]`` shape with K >= 2, ``beta`` or ``eta`` <= 0, NaN rewards.
    """
    if policy_logps.dim() != 2 or policy_logps.shape[-1] < 2:
        raise ValueError(f"policy_logps must be [B, K] with K >= 2, got shape {tuple(policy_logps.shape)}")
    if ref_logps.shape != policy_logps.shape or rewards.shape != policy_logps.shape:
        raise ValueError(
            f"policy_logps {tuple(policy_logps.shape)}, ref_logps {tuple(ref_logps.shape)} and rewards "
            f"{tuple(rewards.shape)} must have the same [B, K] shape"
        )
    return reward_targets(rewards, beta=beta, eta=eta)


def reward_targets(rewards: torch.Tensor, *, beta: float, eta: float) -> torch.Tensor:
    """The detached targets ``eta * r*`` (at least fp32), after checking ``beta``, ``eta`` > 0 and no NaN reward."""
    if not beta > 0 or not eta > 0:
        raise ValueError(f"beta and eta must be > 0, got beta={beta}, eta={eta}")
    targets = eta * upcast(rewards.detach())
    if torch.isnan(targets).any():
        raise ValueError("rewards contain NaN")
    return targets


def rpo_loss(
    *,
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    rewards: torch.Tensor,
    metric: str,
    beta: float,
    eta: float,
) -> torch.Tensor:
    """Per-prompt RPO loss ``D[beta log(pi/pi_ref) || eta r*]`` (Eq. 5), unreduced.

    Args:
        policy_logps: ``[B, K]`` sequence log-probs of the K responses of each prompt under the policy.
        ref_logps: ``[B, K]`` the same under the reference policy (no gradient flows into it).
        rewards: ``[B, K]`` explicit rewards ``r*``; ``+inf`` marks an infinitely preferred response.
        metric: ``sq`` (K=2 margin), ``sqloo`` (Eq. 6), ``bwd`` (Eq. 7/13) or ``fwd`` (KL[q^a || q^b]).
        beta: KL-regularization strength, > 0.
        eta: reward scale, > 0.

    Returns:
        ``[B]`` losses, computed in fp32 for fp32/bf16/fp16 inputs (fp64 stays fp64).
    """
    if metric not in DISTANCES:
        raise ValueError(f"unknown RPO metric {metric!r}; choose one of {', '.join(METRICS)}")
    targets = scaled_targets(
        policy_logps=policy_logps, ref_logps=ref_logps, rewards=rewards, beta=beta, eta=eta
    )
    if metric in ("sq", "sqloo") and not torch.isfinite(targets).all():
        raise ValueError(f"metric {metric!r} needs finite rewards; infinite margins are for 'bwd' (DPO)")
    a = implicit_rewards(policy_logps=policy_logps, ref_logps=ref_logps.detach(), beta=beta)
    return DISTANCES[metric](a, targets)
