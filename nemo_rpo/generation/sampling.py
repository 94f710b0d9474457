"""Choosing the next token from full-vocabulary logits: temperature, top-k, top-p, greedy.

Pure torch, no process groups. Randomness is one uniform number per row and step, drawn on the CPU
from an explicit ``torch.Generator`` and turned into a token by inverting the filtered distribution's
CDF. The draws therefore do not depend on the device, the vocabulary layout or whether a KV cache is
used, and a run is reproduced by reseeding the generator (:func:`sampling_generator`).
"""

from __future__ import annotations

import torch

from nemo_rpo.config.schema import GenerationConfig

__all__ = ["draw_uniforms", "filter_logits", "sampling_generator", "select_tokens"]

_MIX = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: spreads consecutive steps over the seed space


def sampling_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator for the sampling of training step ``step`` of a run seeded with ``seed``.

    Every model-parallel rank must use the same one; pass a different ``seed`` per data-parallel rank
    when the ranks should draw independently.
    """
    return torch.Generator().manual_seed((seed * _MIX + step) % (2**63 - 1))


def draw_uniforms(generator: torch.Generator, num_rows: int, cfg: GenerationConfig) -> torch.Tensor | None:
    """One U[0, 1) number per row for this step (``None`` for greedy decoding, which draws nothing)."""
    if cfg.temperature == 0:
        return None
    return torch.rand(num_rows, generator=generator, dtype=torch.float64)


def filter_logits(logits: torch.Tensor, cfg: GenerationConfig) -> torch.Tensor:
    """Tempered logits with the tokens outside top-k / the top-p nucleus set to ``-inf``.

    Args:
        logits: ``[N, V]`` float32.
        cfg: temperature (> 0 here), top_k (0 = off), top_p (1.0 = off).
    """
    if cfg.temperature != 1.0:  # dividing by 1.0 would copy the [N, V] logits and change nothing
        logits = logits / cfg.temperature
    if 0 < cfg.top_k < logits.shape[-1]:
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the more likely ones already cover top_p; the most likely always stays.
        drop_sorted = probs.cumsum(dim=-1) - probs >= cfg.top_p
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def select_tokens(
    logits: torch.Tensor,
    uniforms: torch.Tensor | None,
    cfg: GenerationConfig,
    *,
    vocab_size: int,
    workspace: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next tokens and their log-probabilities under the policy.

    Args:
        logits: ``[N, V_padded]`` the full vocabulary at the last position (any float dtype).
        uniforms: ``[N]`` from :func:`draw_uniforms` (``None`` when greedy).
        cfg: sampling options.
        vocab_size: the tokenizer's vocabulary; the padding rows ``>= vocab_size`` are never chosen.
        workspace: a dict the caller keeps across the steps of one generation: the ``[N, V]`` results
            (log-softmax, probabilities, float64 CDF) are written into buffers kept there instead of new
            tensors each step (the same values; at N = 32, V = 49,152 that is 24 MB a step not allocated
            and faulted in again).

    Returns:
        ``tokens`` ``[N]`` long and ``logps`` ``[N]`` float32: ``log_softmax(logits)`` at the tokens,
        over the whole padded vocabulary at temperature 1 (what the training forward computes), not
        the log-probability of the filtered sampling distribution.
    """
    logits = logits.float()
    policy_logps = torch.ops.aten._log_softmax.out(logits, -1, False, out=_buffer(workspace, "logps", logits))
    candidates = logits[:, :vocab_size]
    if cfg.temperature == 0:
        tokens = candidates.argmax(dim=-1)
    else:
        assert uniforms is not None, "sampling with temperature > 0 needs uniforms"
        filtered = filter_logits(candidates, cfg)
        probs = torch.ops.aten._softmax.out(filtered, -1, False, out=_buffer(workspace, "probs", filtered))
        # float64 CDF, summed in place: the values of probs.double().cumsum(-1)
        cdf = _buffer(workspace, "cdf", filtered, torch.float64).copy_(probs).cumsum_(dim=-1)
        target = (uniforms.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
        # right=True: the first index whose cdf exceeds the target, so zero-probability tokens are skipped.
        tokens = torch.searchsorted(cdf, target, right=True).squeeze(-1)
        # Rounding can put the target at the total mass: take the last token with probability > 0.
        past = tokens >= vocab_size
        if bool(past.any()):  # rare: skip the extra pass over [N, V] otherwise
            tokens = torch.where(past, cdf.argmax(dim=-1), tokens)
    return tokens, policy_logps.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _buffer(
    workspace: dict | None, name: str, like: torch.Tensor, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """An uninitialised tensor of ``like``'s shape (and ``dtype``), kept in ``workspace`` for the next step."""
    dtype = dtype or like.dtype
    if workspace is None:
        return torch.empty(like.shape, dtype=dtype, device=like.device)
    buf = workspace.get(name)
    if buf is None or buf.shape != like.shape or buf.dtype != dtype or buf.device != like.device:
        buf = workspace[name] = torch.empty(like.shape, dtype=dtype, device=like.device)
    return buf
