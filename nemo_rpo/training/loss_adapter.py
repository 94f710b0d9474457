"""Megatron ``loss_func`` for preference batches: per-token log-probs → sequence log-probs → named loss.

Megatron's schedules call ``loss_func(output_tensor)`` on the last pipeline stage. With
``calculate_per_token_loss=True`` we return ``(loss_sum, num_prompts, report)``: megatron adds the
prompt counts over micro-batches and data-parallel ranks and scales the gradients by their inverse,
so the update is the exact mean over the global batch however it is split.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from nemo_rpo.config.schema import LossConfig
from nemo_rpo.data.batch import PreferenceBatch
from nemo_rpo.losses import LOSSES, preference_loss, rpo_stats, sft_nll
from nemo_rpo.losses.logps import response_token_logps

# Scalars summed over micro-batches and data-parallel ranks, in this order; divided once when logged.
REPORT_KEYS = (
    "loss_sum", "num_prompts", "acc_sum", "acc_count",
    "m_sx", "m_sy", "m_sxx", "m_syy", "m_sxy", "m_n",
    "implicit_best_sum", "implicit_worst_sum", "margin_sum", "num_tokens", "num_response_tokens",
)  # fmt: skip


def num_real_tokens(loss_mask: torch.Tensor) -> torch.Tensor:
    """Tokens before padding: a row whose last response label sits at ``j`` holds ``j + 2`` tokens."""
    width = loss_mask.shape[-1]
    last = (torch.arange(1, width + 1, device=loss_mask.device) * (loss_mask > 0)).max(dim=-1).values
    return (last + 1).clamp(max=width).sum().float()


def _seq_logps(
    token_logps: torch.Tensor, mask: torch.Tensor, rows: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum, mean, number of response tokens) per sequence, each reshaped to ``[rows, R]``."""
    mask = mask.to(token_logps.dtype)
    total = (token_logps * mask).sum(dim=-1)
    counts = mask.sum(dim=-1).clamp(min=1.0)
    return total.view(rows, -1), (total / counts).view(rows, -1), counts.view(rows, -1)


def preference_losses(
    *, token_logps: torch.Tensor, batch: PreferenceBatch, ref_logps: torch.Tensor | None, loss: LossConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-prompt losses ``[B]`` and the summed report for one micro-batch.

    Args:
        token_logps: ``[B*R, T]`` log p(label) per position (fp32).
        batch: the micro-batch; ``R = K`` responses per prompt (+1 mismatched pair for KTO).
        ref_logps: ``[B, R]`` cached reference sequence log-probs (summed), or None when the loss needs none;
            for a token-level loss ``[B, R, L]``, the response tokens' log-probs in order.
        loss: which loss and its hyper-parameters; ``average_log_probs`` turns policy and reference
            log-probs into per-token means over the same response tokens (NeMo-Aligner's
            ``preference_average_log_probs``: the mean of ``log pi - log pi_ref``).
    """
    info = LOSSES[loss.name]
    k = batch.num_responses
    num_prompts = batch.index.numel()
    seq_sum, seq_mean, num_tokens = _seq_logps(token_logps, batch.loss_mask, num_prompts)
    token_inputs = {}
    if info.token_level:  # per-token policy and reference log-probs, left-aligned; ref sums for the stats
        width = ref_logps.shape[-1]
        tokens = response_token_logps(token_logps=token_logps, mask=batch.loss_mask, width=width)
        token_mask = torch.arange(width, device=tokens.device) < batch.loss_mask.sum(dim=-1, keepdim=True)
        token_inputs = {
            "policy_logps": tokens.view(num_prompts, -1, width)[:, :k],
            "ref_logps": ref_logps[:, :k],
            "token_mask": token_mask.view(num_prompts, -1, width)[:, :k],
        }
        ref_logps = ref_logps.sum(dim=-1)
    seq = seq_mean if info.length_normalized or loss.average_log_probs else seq_sum
    if ref_logps is not None and loss.average_log_probs:
        ref_logps = ref_logps / num_tokens.to(ref_logps.dtype)
    policy = seq[:, :k]
    ref = ref_logps[:, :k] if ref_logps is not None else torch.zeros_like(policy)
    kl_policy = seq[:, k] if info.needs_kl_pairs else None
    kl_ref = ref_logps[:, k] if info.needs_kl_pairs and ref_logps is not None else None
    inputs = {"policy_logps": policy, "ref_logps": ref if info.uses_reference else None, "rewards": batch.rewards,
              "kl_policy_logps": kl_policy, "kl_ref_logps": kl_ref, **token_inputs}  # fmt: skip
    losses = preference_loss(loss.name, **inputs, **{name: getattr(loss, name) for name in info.hparams})
    if loss.sft_loss_weight > 0:
        losses = losses + loss.sft_loss_weight * sft_nll(policy_logps=seq_mean[:, :k], rewards=batch.rewards)

    # Without explicit rewards the data order is the preference (response 0 is chosen).
    rank_rewards = (
        batch.rewards
        if batch.rewards is not None
        else -torch.arange(k, dtype=torch.float32).expand(num_prompts, k)
    )
    stats = rpo_stats(policy_logps=policy, ref_logps=ref, rewards=rank_rewards, beta=loss.beta, eta=loss.eta)
    implicit = stats["implicit_rewards"]
    best = rank_rewards.argmax(dim=-1, keepdim=True)
    worst = rank_rewards.argmin(dim=-1, keepdim=True)
    implicit_best = implicit.gather(-1, best).squeeze(-1)
    implicit_worst = implicit.gather(-1, worst).squeeze(-1)
    moments = stats["moments"] if batch.rewards is not None else torch.zeros(6, device=policy.device)
    values = [
        losses.detach().sum(), torch.tensor(float(num_prompts)), stats["acc_sum"].sum(), stats["acc_count"].sum(),
        *moments, implicit_best.sum(), implicit_worst.sum(), (implicit_best - implicit_worst).sum(),
        num_real_tokens(batch.loss_mask),
        batch.loss_mask.sum().float(),
    ]  # fmt: skip
    report = torch.stack(
        [torch.as_tensor(v, dtype=torch.float64, device=policy.device).reshape(()) for v in values]
    )
    return losses, {"report": report, "seq_logps": seq_sum.detach()}


def make_loss_func(
    batch: PreferenceBatch, ref_logps: torch.Tensor | None, loss: LossConfig
) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]]:
    """Build megatron's ``loss_func`` for ``batch``: takes GPTModel's per-token NLL ``[B*R, T]``."""

    def loss_func(output_tensor: torch.Tensor):
        losses, report = preference_losses(
            token_logps=-output_tensor.float(), batch=batch, ref_logps=ref_logps, loss=loss
        )
        num_prompts = torch.tensor(losses.numel(), dtype=torch.int, device=losses.device)
        return losses.sum(), num_prompts, report

    return loss_func
