"""Token-level RPO (issue 21, item 3; derivation in docs/token_level.md).

Per-token implicit rewards ``a_{k,t} = beta log(pi(y_{k,t} | x, y_{k,<t}) / pi_ref(...))`` sum, over the
first t tokens of response k, to the implicit reward of that prefix,
``A_k(t) = beta log(pi(y_{k,<=t}|x) / pi_ref(y_{k,<=t}|x))``; after the response ends ``A_k(t)`` keeps its
final value, the sequence implicit reward of Eq. 3. At every depth t the prefixes of the K responses
are matched against the same target ``eta r*`` (each prefix is credited with the reward of the response
that continues it, a one-rollout Monte Carlo value target) with the RPO distance ``D`` of Eq. 5:

``L = sum_t w_t D[A(t) || eta r*]``,  ``w_t ∝ token_decay^(T - t)`` for ``t = 1..T``, ``sum_t w_t = 1``,

``T`` the longest response of the prompt. ``token_decay = 0`` keeps only ``t = T``, where ``A(T)`` is the
sequence implicit reward: the loss is then sequence-level ``rpo_<metric>`` exactly (values and gradients).
"""

from __future__ import annotations

import torch

import nemo_rpo.losses.presets  # noqa: F401 - the paper's losses register first and lead every listing
from nemo_rpo.losses.distances import DISTANCES
from nemo_rpo.losses.registry import register_loss
from nemo_rpo.losses.rpo import reward_targets, upcast


def depth_weights(token_mask: torch.Tensor, token_decay: float) -> torch.Tensor:
    """``w_t ∝ token_decay^(T - t)`` over the depths ``t = 1..T`` of each prompt, summing to 1: ``[B, L]``.

    Args:
        token_mask: ``[B, K, L]``, true at each response's tokens (left-aligned).
        token_decay: in ``[0, 1]``; 0 puts all the weight on ``t = T`` (``0^0 = 1``), 1 spreads it evenly.
    """
    if not 0.0 <= token_decay <= 1.0:
        raise ValueError(f"token_decay must be in [0, 1], got {token_decay}")
    longest = token_mask.sum(dim=-1).amax(dim=-1, keepdim=True).clamp(min=1)  # T per prompt, [B, 1]
    depth = torch.arange(1, token_mask.shape[-1] + 1, device=token_mask.device).unsqueeze(0)
    decay = torch.tensor(token_decay, dtype=torch.float64, device=token_mask.device)
    weights = torch.where(depth <= longest, decay ** (longest - depth), torch.zeros((), dtype=torch.float64))
    return weights / weights.sum(dim=-1, keepdim=True)


def token_rpo_loss(
    *,
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    rewards: torch.Tensor,
    token_mask: torch.Tensor,
    metric: str,
    beta: float,
    eta: float,
    token_decay: float,
) -> torch.Tensor:
    """Token-level RPO: ``sum_t w_t D[A(t) || eta r*]`` (see the module docstring), unreduced.

    Args:
        policy_logps: ``[B, K, L]`` per-token log-probs of the K responses under the policy, the l-th
            response token at index l (left-aligned), anything past the end (masked out).
        ref_logps: ``[B, K, L]`` the same under the reference (no gradient flows into it).
        rewards: ``[B, K]`` explicit rewards ``r*``.
        token_mask: ``[B, K, L]`` true (or 1) at response tokens.
        metric: the RPO distance ``D`` at each depth: ``bwd``, ``sqloo``, ``fwd`` or (K=2) ``sq``.
        beta, eta: as in :func:`~nemo_rpo.losses.rpo.rpo_loss`.
        token_decay: depth weights ``∝ token_decay^(T - t)``; 0 gives sequence-level RPO.

    Returns:
        ``[B]`` losses (at least fp32).
    """
    if policy_logps.dim() != 3 or policy_logps.shape[1] < 2:
        raise ValueError(f"policy_logps must be [B, K, L] with K >= 2, got shape {tuple(policy_logps.shape)}")
    if ref_logps.shape != policy_logps.shape or token_mask.shape != policy_logps.shape:
        raise ValueError(
            f"policy_logps {tuple(policy_logps.shape)}, ref_logps {tuple(ref_logps.shape)} and token_mask "
            f"{tuple(token_mask.shape)} must have the same [B, K, L] shape"
        )
    if rewards.shape != policy_logps.shape[:2]:
        raise ValueError(
            f"rewards must be [B, K] = {tuple(policy_logps.shape[:2])}, got {tuple(rewards.shape)}"
        )
    targets = reward_targets(rewards, beta=beta, eta=eta)
    if metric not in DISTANCES:
        raise ValueError(f"unknown RPO metric {metric!r}; choose one of {', '.join(DISTANCES)}")
    if metric in ("sq", "sqloo") and not torch.isfinite(targets).all():
        raise ValueError(f"metric {metric!r} needs finite rewards")
    mask = token_mask > 0
    log_ratio = upcast(policy_logps) - upcast(ref_logps).detach()
    token_rewards = beta * torch.where(mask, log_ratio, torch.zeros_like(log_ratio))  # a_{k,t}
    prefix = token_rewards.cumsum(dim=-1)  # A_k(t); constant once response k has ended
    b, k, length = prefix.shape
    per_depth = prefix.transpose(1, 2).reshape(b * length, k)  # one row of K prefixes per depth
    depth_targets = targets.unsqueeze(1).expand(b, length, k).reshape(b * length, k)
    distances = DISTANCES[metric](per_depth, depth_targets).view(b, length)
    weights = depth_weights(mask, token_decay).to(distances.dtype)
    # Depths past T carry weight 0; where() keeps a non-finite distance there from reaching the sum.
    return torch.where(weights > 0, weights * distances, torch.zeros_like(distances)).sum(dim=-1)


def _token_rpo(metric: str):  # noqa: ANN202 - returns a loss function
    def loss(
        *,
        policy_logps: torch.Tensor,
        ref_logps: torch.Tensor,
        rewards: torch.Tensor,
        token_mask: torch.Tensor,
        beta: float,
        eta: float,
        token_decay: float,
    ) -> torch.Tensor:
        return token_rpo_loss(
            policy_logps=policy_logps, ref_logps=ref_logps, rewards=rewards, token_mask=token_mask,
            metric=metric, beta=beta, eta=eta, token_decay=token_decay,
        )  # fmt: skip

    loss.__name__ = loss.__qualname__ = f"rpo_token_{metric}"
    loss.__doc__ = (
        f"Token-level RPO with the {metric!r} distance: :func:`token_rpo_loss` ``(metric={metric!r})``."
    )
    return loss


_TOKEN = {"needs_rewards": True, "uses_reference": True, "hparams": ("beta", "eta", "token_decay")}
register_loss("rpo_token_bwd", **_TOKEN, metric="bwd", token_level=True)(_token_rpo("bwd"))
register_loss("rpo_token_sqloo", **_TOKEN, metric="sqloo", token_level=True)(_token_rpo("sqloo"))
