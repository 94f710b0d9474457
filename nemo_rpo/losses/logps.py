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
