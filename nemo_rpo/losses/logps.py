"""Token log-probs → sequence log-probs."""

from __future__ import annotations

import torch


def sequence_logps(*, token_logps: torch.Tensor, mask: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """Sum (or mean, ``normalize=True``) of ``token_logps [N, T]`` over response tokens ``mask [N, T]`` → ``[N]``.

    Computed in at least fp32. A sequence with no response token has mean log-prob 0.
    """
    token_logps = token_logps.to(torch.promote_types(token_logps.dtype, torch.float32))
    mask = mask.to(token_logps.dtype)
    total = (token_logps * mask).sum(dim=-1)
    if not normalize:
        return total
    return total / mask.sum(dim=-1).clamp(min=1.0)


def response_token_logps(*, token_logps: torch.Tensor, mask: torch.Tensor, width: int) -> torch.Tensor:
    """The response tokens of each row in order, left-aligned, zero past the end: ``[N, T]`` → ``[N, width]``.

    Differentiable in ``token_logps``. Token-level losses compare the t-th tokens of responses whose
    prompts (and so start columns) differ.

    Raises:
        ValueError: a row holds more than ``width`` response tokens.
    """
    mask = mask > 0
    longest = int(mask.sum(dim=-1).max()) if mask.numel() else 0
    if longest > width:
        raise ValueError(f"a response has {longest} tokens, more than width={width}")
    token_logps = token_logps.to(torch.promote_types(token_logps.dtype, torch.float32))
    slot = torch.where(mask, mask.long().cumsum(dim=-1) - 1, width)  # other positions: a spare column
    values = torch.where(mask, token_logps, torch.zeros_like(token_logps))
    out = token_logps.new_zeros(token_logps.shape[0], width + 1).scatter_add(-1, slot, values)
    return out[:, :width]
