"""Every loss of the package, each declared once with :func:`~nemo_rpo.losses.registry.register_loss`.

RPO with each metric (Eq. 5), then Table 1's algorithms as configurations of :func:`rpo_loss`.
Pairwise presets take ``[B, 2]`` inputs with response 0 the chosen one. Each preset only fixes what
the paper says differs: the metric, the target margin, and (SimPO) the reference. IPO and Distill-DPO
also carry the constant factor that makes them equal their published closed forms. KTO is a separate
baseline, SFT the supervised stage, InfoNCA the cross-entropy twin of ``rpo_bwd``.
"""

from __future__ import annotations

import math

import torch

from nemo_rpo.losses.distances import target_log_softmax
from nemo_rpo.losses.registry import register_loss
from nemo_rpo.losses.rpo import implicit_rewards, rpo_loss, scaled_targets, upcast


def _rpo(metric: str):  # noqa: ANN202 - returns a loss function
    def loss(
        *, policy_logps: torch.Tensor, ref_logps: torch.Tensor, rewards: torch.Tensor, beta: float, eta: float
    ) -> torch.Tensor:
        return rpo_loss(
            policy_logps=policy_logps, ref_logps=ref_logps, rewards=rewards, metric=metric, beta=beta, eta=eta
        )

    loss.__name__ = loss.__qualname__ = f"rpo_{metric}"
    loss.__doc__ = f"RPO with the {metric!r} distance: :func:`rpo_loss` ``(metric={metric!r})``."
    return loss


_RPO = {"needs_rewards": True, "uses_reference": True, "hparams": ("beta", "eta")}
register_loss("rpo_sq", **_RPO, metric="sq", pairwise=True, pairwise_note="use loss=rpo_sqloo for K > 2")(
    _rpo("sq")
)
register_loss("rpo_sqloo", **_RPO, metric="sqloo")(_rpo("sqloo"))
register_loss("rpo_bwd", **_RPO, metric="bwd", aliases=("rpo_bwd_kl",))(_rpo("bwd"))  # NeMo-Aligner's
register_loss("rpo_fwd", **_RPO, metric="fwd", aliases=("rpo_fwd_kl",))(_rpo("fwd"))


def _margin_rewards(like: torch.Tensor, margin: float) -> torch.Tensor:
    """Rewards ``[margin, 0]`` per row, so ``r*(y1) - r*(y2) = margin`` (may be +inf)."""
    rewards = torch.zeros_like(upcast(like))
    rewards[:, 0] = margin
    return rewards


@register_loss(
    "dpo", needs_rewards=False, uses_reference=True, hparams=("beta",), metric="bwd", pairwise=True
)
def dpo(*, policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO = bwd with ``delta_r* = inf`` (Table 1; Appendix C, Eq. 16): ``-log sigma(beta delta)``."""
    rewards = _margin_rewards(policy_logps, math.inf)
    return rpo_loss(
        policy_logps=policy_logps, ref_logps=ref_logps, rewards=rewards, metric="bwd", beta=beta, eta=1.0
    )


@register_loss(
    "cdpo",
    needs_rewards=False,
    uses_reference=True,
    hparams=("beta", "label_smoothing"),
    metric="bwd",
    pairwise=True,
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


@register_loss("ipo", needs_rewards=False, uses_reference=True, hparams=("beta",), metric="sq", pairwise=True)
def ipo(*, policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO = sq with ``delta_r* = 1/2`` (Table 1), times ``2 / beta^2`` to equal ``(delta - 1/(2 beta))^2``."""
    rewards = _margin_rewards(policy_logps, 0.5)
    loss = rpo_loss(
        policy_logps=policy_logps, ref_logps=ref_logps, rewards=rewards, metric="sq", beta=beta, eta=1.0
    )
    return (2.0 / beta**2) * loss


@register_loss(
    "distill_dpo",
    needs_rewards=True,
    uses_reference=True,
    hparams=("beta", "eta"),
    metric="sq",
    pairwise=True,
)
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


@register_loss(
    "simpo",
    needs_rewards=False,
    uses_reference=False,
    hparams=("beta", "gamma"),
    metric="bwd",
    pairwise=True,
    length_normalized=True,
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


@register_loss(
    "kto",
    needs_rewards=False,
    uses_reference=True,
    pairwise=True,
    needs_kl_pairs=True,
    hparams=("beta", "kto_desirable_weight", "kto_undesirable_weight"),
)
def _kto_loss(
    *,
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    kl_policy_logps: torch.Tensor,
    kl_ref_logps: torch.Tensor,
    beta: float,
    kto_desirable_weight: float,
    kto_undesirable_weight: float,
) -> torch.Tensor:
    """:func:`kto` with its weights under their ``LossConfig`` names."""
    return kto(
        policy_logps=policy_logps,
        ref_logps=ref_logps,
        kl_policy_logps=kl_policy_logps,
        kl_ref_logps=kl_ref_logps,
        beta=beta,
        desirable_weight=kto_desirable_weight,
        undesirable_weight=kto_undesirable_weight,
    )


# Supervised fine-tuning on the best response (the SFT stage before alignment; online warm-up).
@register_loss(
    "sft", needs_rewards=False, uses_reference=False, optional_rewards=True, length_normalized=True
)
def sft_nll(*, policy_logps: torch.Tensor, rewards: torch.Tensor | None) -> torch.Tensor:
    """NLL of the best response per prompt (NeMo-Aligner's ``sft_loss_weight`` term), ``[B]``.

    The best response is the highest-reward one; with ``rewards=None`` it is response 0 (chosen).
    """
    if rewards is None:
        return -upcast(policy_logps[:, 0])
    best = rewards.argmax(dim=-1, keepdim=True)
    return -upcast(policy_logps).gather(-1, best).squeeze(-1)


@register_loss("infonca", needs_rewards=True, uses_reference=True, hparams=("beta", "eta"), metric="bwd")
def infonca(
    *, policy_logps: torch.Tensor, ref_logps: torch.Tensor, rewards: torch.Tensor, beta: float, eta: float
) -> torch.Tensor:
    """InfoNCA (Chen et al., 2024, arXiv:2402.05369) over the K responses of each prompt:
    ``-sum_k softmax(r*/alpha)_k log softmax(beta log(pi/pi_ref))_k`` with ``eta = 1/alpha``.

    The cross-entropy from the reward distribution ``q^b`` to the implicit one ``q^a``: ``rpo_bwd``'s
    ``KL[q^b || q^a]`` (Eq. 7) plus the entropy of ``q^b``, which the policy does not change, so the
    gradients are ``rpo_bwd``'s. ``+inf`` rewards put all the target mass on those responses.
    """
    targets = scaled_targets(
        policy_logps=policy_logps, ref_logps=ref_logps, rewards=rewards, beta=beta, eta=eta
    )
    a = implicit_rewards(policy_logps=policy_logps, ref_logps=ref_logps.detach(), beta=beta)
    return -(target_log_softmax(targets).exp() * torch.log_softmax(a, dim=-1)).sum(dim=-1)
