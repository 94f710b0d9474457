"""Table 1: existing preference-optimization algorithms as configurations of :func:`rpo_loss`.

Pairwise presets take ``[B, 2]`` inputs with response 0 the chosen one. Each preset only fixes what
the paper says differs: the metric, the target margin, and (SimPO) the reference. IPO and Distill-DPO
also carry the constant factor that makes them equal their published closed forms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nemo_rpo.losses.rpo import rpo_loss, upcast


def _margin_rewards(like: torch.Tensor, margin: float) -> torch.Tensor:
    """Rewards ``[margin, 0]`` per row, so ``r*(y1) - r*(y2) = margin`` (may be +inf)."""
    rewards = torch.zeros_like(upcast(like))
    rewards[:, 0] = margin
    return rewards


def dpo(*, policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO = bwd with ``delta_r* = inf`` (Table 1; Appendix C, Eq. 16): ``-log sigma(beta delta)``."""
    rewards = _margin_rewards(policy_logps, math.inf)
    return rpo_loss(
        policy_logps=policy_logps, ref_logps=ref_logps, rewards=rewards, metric="bwd", beta=beta, eta=1.0
    )


def cdpo(
    *, policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float, label_smoothing: float
) -> torch.Tensor:
    """cDPO = bwd with ``delta_r* = sigma^-1(c)``, ``c = 1 - label_smoothing`` (Table 1).

    Equals the published cDPO loss minus the constant entropy H(c); the gradients are identical.
    """
    c = 1.0 - label_smoothing
    margin = math.inf if c == 1.0 else math.log(c / (1.0 - c))
    rewards = _margin_rewards(policy_logps, margin)
    return rpo_loss(
        policy_logps=policy_logps, ref_logps=ref_logps, rewards=rewards, metric="bwd", beta=beta, eta=1.0
    )


def ipo(*, policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO = sq with ``delta_r* = 1/2`` (Table 1), times ``2 / beta^2`` to equal ``(delta - 1/(2 beta))^2``."""
    rewards = _margin_rewards(policy_logps, 0.5)
    loss = rpo_loss(
        policy_logps=policy_logps, ref_logps=ref_logps, rewards=rewards, metric="sq", beta=beta, eta=1.0
    )
    return (2.0 / beta**2) * loss


def distill_dpo(
    *, policy_logps: torch.Tensor, ref_logps: torch.Tensor, rewards: torch.Tensor, beta: float, eta: float
) -> torch.Tensor:
    """Distill-DPO = 2 * sq on the explicit rewards (Table 1): ``(beta delta - eta (r1 - r2))^2``.

    This is NeMo-Aligner's ``rpo_sq`` (with ``eta`` = its ``gt_reward_scale``); our ``rpo_sq`` is the
    paper's ``1/2 (...)^2``, half of it.
    """
    return 2.0 * rpo_loss(
        policy_logps=policy_logps, ref_logps=ref_logps, rewards=rewards, metric="sq", beta=beta, eta=eta
    )


def simpo(*, policy_logps: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """SimPO: ``-log sigma(beta (m1 - m2) - gamma)`` on length-normalized log-probs ``m`` (Table 1).

    ``policy_logps`` must be length-normalized. There is no reference model: RPO's reference is
    ``log pi_ref(y|x) ∝ |y|``, which length normalization turns into a constant that bwd cancels;
    the margin gamma enters as a reference offset ``gamma / beta`` on the chosen response.
    """
    ref_logps = torch.zeros_like(upcast(policy_logps))
    ref_logps[:, 0] = gamma / beta
    return dpo(policy_logps=policy_logps, ref_logps=ref_logps, beta=beta)


def kto(
    *,
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    kl_policy_logps: torch.Tensor,
    kl_ref_logps: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """KTO baseline (Ethayarajh et al., 2024) on pairs: response 0 desirable, response 1 undesirable.

    Args:
        policy_logps, ref_logps: ``[B, 2]`` sequence log-probs.
        kl_policy_logps, kl_ref_logps: ``[B]`` log-probs of mismatched (prompt, response) pairs; their
            mean log-ratio, clamped at 0 and detached, is the reference point z0.

    Returns:
        ``[B]``: ``w_D (1 - sigma(beta (rho_c - z0))) + w_U (1 - sigma(beta (z0 - rho_r)))``.
    """
    log_ratio = upcast(policy_logps) - upcast(ref_logps).detach()
    z0 = (upcast(kl_policy_logps) - upcast(kl_ref_logps)).mean().clamp(min=0).detach()
    desirable = 1.0 - torch.sigmoid(beta * (log_ratio[:, 0] - z0))
    undesirable = 1.0 - torch.sigmoid(beta * (z0 - log_ratio[:, 1]))
    return desirable_weight * desirable + undesirable_weight * undesirable


def sft_nll(*, policy_logps: torch.Tensor, rewards: torch.Tensor | None) -> torch.Tensor:
    """NLL of the best response per prompt (NeMo-Aligner's ``sft_loss_weight`` term), ``[B]``.

    The best response is the highest-reward one; with ``rewards=None`` it is response 0 (chosen).
    """
    if rewards is None:
        return -upcast(policy_logps[:, 0])
    best = rewards.argmax(dim=-1, keepdim=True)
    return -upcast(policy_logps).gather(-1, best).squeeze(-1)


@dataclass(frozen=True)
class PresetInfo:
    """What the training layer must feed a named loss."""

    # Reads explicit rewards r*. The data layer follows it: losses without it accept data without rewards.
    needs_rewards: bool
    uses_reference: bool  # needs reference log-probs
    length_normalized: bool  # policy log-probs averaged over response tokens
    pairwise: bool  # K must be 2
    needs_kl_pairs: bool = False  # mismatched pairs for KTO's reference point


PRESETS: dict[str, PresetInfo] = {
    "rpo_sq": PresetInfo(needs_rewards=True, uses_reference=True, length_normalized=False, pairwise=True),
    "rpo_sqloo": PresetInfo(needs_rewards=True, uses_reference=True, length_normalized=False, pairwise=False),
    "rpo_bwd": PresetInfo(needs_rewards=True, uses_reference=True, length_normalized=False, pairwise=False),
    "rpo_fwd": PresetInfo(needs_rewards=True, uses_reference=True, length_normalized=False, pairwise=False),
    "dpo": PresetInfo(needs_rewards=False, uses_reference=True, length_normalized=False, pairwise=True),
    "cdpo": PresetInfo(needs_rewards=False, uses_reference=True, length_normalized=False, pairwise=True),
    "ipo": PresetInfo(needs_rewards=False, uses_reference=True, length_normalized=False, pairwise=True),
    "distill_dpo": PresetInfo(
        needs_rewards=True, uses_reference=True, length_normalized=False, pairwise=True
    ),
    "simpo": PresetInfo(needs_rewards=False, uses_reference=False, length_normalized=True, pairwise=True),
    "kto": PresetInfo(
        needs_rewards=False, uses_reference=True, length_normalized=False, pairwise=True, needs_kl_pairs=True
    ),
    # Supervised fine-tuning on the best response (the SFT stage before alignment; online warm-up).
    "sft": PresetInfo(needs_rewards=False, uses_reference=False, length_normalized=True, pairwise=False),
}

# NeMo-Aligner's loss names.
ALIASES = {"rpo_bwd_kl": "rpo_bwd", "rpo_fwd_kl": "rpo_fwd"}


def canonical_name(name: str) -> str:
    """Resolve an alias; raise a clear error for an unknown name (never fall back to DPO)."""
    name = ALIASES.get(name, name)
    if name not in PRESETS:
        raise ValueError(
            f"unknown loss {name!r}; choose one of {', '.join(PRESETS)} (aliases: {', '.join(ALIASES)})"
        )
    return name


def preference_loss(
    name: str,
    *,
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor | None,
    rewards: torch.Tensor | None,
    beta: float,
    eta: float = 1.0,
    label_smoothing: float = 0.0,
    gamma: float = 0.0,
    kl_policy_logps: torch.Tensor | None = None,
    kl_ref_logps: torch.Tensor | None = None,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """Run the loss named ``name`` (a preset of :data:`PRESETS` or an alias) on ``[B, K]`` inputs → ``[B]``."""
    name = canonical_name(name)
    info = PRESETS[name]
    if info.needs_rewards and rewards is None:
        raise ValueError(f"loss {name!r} needs explicit rewards; this data has none")
    if info.pairwise and policy_logps.shape[-1] != 2:
        hint = "; use rpo_sqloo for K > 2" if name == "rpo_sq" else ""
        raise ValueError(f"loss {name!r} is pairwise (K=2), got K={policy_logps.shape[-1]}{hint}")
    if info.uses_reference and ref_logps is None:
        raise ValueError(f"loss {name!r} needs reference log-probs")
    logps = {"policy_logps": policy_logps, "ref_logps": ref_logps}
    if name.startswith("rpo_"):
        return rpo_loss(**logps, rewards=rewards, metric=name[len("rpo_") :], beta=beta, eta=eta)
    if name == "dpo":
        return dpo(**logps, beta=beta)
    if name == "cdpo":
        return cdpo(**logps, beta=beta, label_smoothing=label_smoothing)
    if name == "ipo":
        return ipo(**logps, beta=beta)
    if name == "distill_dpo":
        return distill_dpo(**logps, rewards=rewards, beta=beta, eta=eta)
    if name == "simpo":
        return simpo(policy_logps=policy_logps, beta=beta, gamma=gamma)
    if name == "sft":
        return sft_nll(policy_logps=policy_logps, rewards=rewards)
    if kl_policy_logps is None or kl_ref_logps is None:
        raise ValueError("loss 'kto' needs log-probs of mismatched pairs (kl_policy_logps, kl_ref_logps)")
    return kto(
        **logps,
        kl_policy_logps=kl_policy_logps,
        kl_ref_logps=kl_ref_logps,
        beta=beta,
        desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight,
    )
