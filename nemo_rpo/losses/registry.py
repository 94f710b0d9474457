"""The loss registry: each loss is declared once, with everything the rest of the package asks of it.

A :class:`LossSpec` holds a loss's name and aliases, what it reads (explicit rewards, reference
log-probs, mismatched pairs), whether it is pairwise (K=2) or length-normalized, the ``LossConfig``
fields it takes as hyper-parameters, and a pure function ``(**keyword tensors, **hyper-parameters) -> [B]``.
``loss.name`` is validated against :data:`LOSSES`; the training layer calls every loss through
:func:`preference_loss`; the data layer reads ``needs_rewards``. Adding a loss is one
:func:`register_loss` definition, one YAML in ``conf/loss/`` and its test (README, "Adding a loss").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# The tensors a loss function may take, by keyword; which ones it gets follows from its LossSpec.
TENSOR_INPUTS = ("policy_logps", "ref_logps", "rewards", "kl_policy_logps", "kl_ref_logps", "token_mask")


@dataclass(frozen=True)
class LossSpec:
    """One registered loss: what the training and data layers must feed it."""

    name: str
    fn: Callable[..., torch.Tensor]  # keyword tensors ``[B, K]`` (kl pairs ``[B]``) + hparams -> ``[B]``
    # Reads explicit rewards r*. The data layer follows it: losses without it accept data without rewards.
    needs_rewards: bool
    uses_reference: bool  # needs reference log-probs
    hparams: tuple[str, ...] = ()  # the LossConfig fields it takes, passed to ``fn`` by keyword
    pairwise: bool = False  # K must be 2
    pairwise_note: str = ""  # appended to the K=2 error (what to use instead)
    length_normalized: bool = False  # policy log-probs averaged over response tokens
    needs_kl_pairs: bool = False  # mismatched pairs for KTO's reference point
    optional_rewards: bool = False  # gets rewards when the data has them (``None`` otherwise)
    metric: str | None = None  # the RPO distance it configures (``sq``, ``sqloo``, ``bwd``, ``fwd``)
    aliases: tuple[str, ...] = ()  # other names for it (NeMo-Aligner's, ...)
    # Reads per-token log-probs: ``policy_logps``/``ref_logps`` are ``[B, K, L]`` (the l-th response token,
    # 0 past the end) with ``token_mask`` ``[B, K, L]``, instead of ``[B, K]`` sequence sums.
    token_level: bool = False

    @property
    def inputs(self) -> tuple[str, ...]:
        """The tensor keywords ``fn`` takes."""
        wanted = {
            "policy_logps": True,
            "ref_logps": self.uses_reference,
            "rewards": self.needs_rewards or self.optional_rewards,
            "kl_policy_logps": self.needs_kl_pairs,
            "kl_ref_logps": self.needs_kl_pairs,
            "token_mask": self.token_level,
        }
        return tuple(name for name in TENSOR_INPUTS if wanted[name])


LOSSES: dict[str, LossSpec] = {}
ALIASES: dict[str, str] = {}  # alias -> name, filled from each LossSpec's ``aliases``


def register_loss(
    name: str, *, needs_rewards: bool, uses_reference: bool, **declared
) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    """Decorator: register ``fn`` as the loss ``name`` (see :class:`LossSpec` for the other fields).

    Returns ``fn`` unchanged. A name or alias that is already taken raises ``ValueError``.
    """

    def register(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        spec = LossSpec(name, fn, needs_rewards, uses_reference, **declared)
        for key in (spec.name, *spec.aliases):
            if key in LOSSES or key in ALIASES:
                raise ValueError(f"register_loss: {key!r} is already a loss name or alias")
        LOSSES[spec.name] = spec
        ALIASES.update(dict.fromkeys(spec.aliases, spec.name))
        return fn

    return register


def canonical_name(name: str) -> str:
    """Resolve an alias; raise a clear error for an unknown name (never fall back to DPO)."""
    name = ALIASES.get(name, name)
    if name not in LOSSES:
        aliases = f" (aliases: {', '.join(ALIASES)})" if ALIASES else ""
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}{aliases}")
    return name


def get_loss(name: str) -> LossSpec:
    """The :class:`LossSpec` of a loss name or alias."""
    return LOSSES[canonical_name(name)]


def preference_loss(
    name: str,
    *,
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor | None = None,
    rewards: torch.Tensor | None = None,
    kl_policy_logps: torch.Tensor | None = None,
    kl_ref_logps: torch.Tensor | None = None,
    token_mask: torch.Tensor | None = None,
    **hparams: float,
) -> torch.Tensor:
    """Run the loss named ``name`` (or an alias) on ``[B, K]`` inputs (``[B, K, L]`` if token-level) → ``[B]``.

    Each loss gets the tensors its :class:`LossSpec` declares and, of ``hparams``, the ones it takes;
    a keyword that no registered loss takes raises ``TypeError`` (a misspelt hyper-parameter is never
    silently ignored).
    """
    spec = get_loss(name)
    name = spec.name
    unknown = sorted(set(hparams) - {h for s in LOSSES.values() for h in s.hparams})
    if unknown:
        raise TypeError(f"preference_loss: no loss takes the hyper-parameter(s) {', '.join(unknown)}")
    if spec.needs_rewards and rewards is None:
        raise ValueError(f"loss {name!r} needs explicit rewards; this data has none")
    k = policy_logps.shape[1] if spec.token_level and policy_logps.dim() == 3 else policy_logps.shape[-1]
    if spec.pairwise and k != 2:
        note = f"; {spec.pairwise_note}" if spec.pairwise_note else ""
        raise ValueError(f"loss {name!r} is pairwise (K=2), got K={k}{note}")
    if spec.uses_reference and ref_logps is None:
        raise ValueError(f"loss {name!r} needs reference log-probs")
    if spec.needs_kl_pairs and (kl_policy_logps is None or kl_ref_logps is None):
        raise ValueError(f"loss {name!r} needs log-probs of mismatched pairs (kl_policy_logps, kl_ref_logps)")
    if spec.token_level and token_mask is None:
        raise ValueError(f"loss {name!r} is token-level: it needs per-token log-probs and their token_mask")
    tensors = {
        "policy_logps": policy_logps, "ref_logps": ref_logps, "rewards": rewards,
        "kl_policy_logps": kl_policy_logps, "kl_ref_logps": kl_ref_logps, "token_mask": token_mask,
    }  # fmt: skip
    kwargs = {key: tensors[key] for key in spec.inputs}
    kwargs.update({key: hparams[key] for key in spec.hparams if key in hparams})
    return spec.fn(**kwargs)
