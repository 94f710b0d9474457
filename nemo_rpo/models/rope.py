"""Rotary position embedding in two passes over q/k instead of megatron's seven.

Megatron's unfused RoPE (``rope_utils._apply_rotary_pos_emb_bshd``, used whenever
``apply_rope_fusion`` is off, i.e. always without Transformer Engine) computes
``t * cos + cat(-t2, t1) * sin`` and then ``cat((t, t_pass))``: a negation, two concatenations, two
products and a sum, each a full copy of ``[s, b, n, d]``, and autograd's backward adds as many again
(on CPU that was ~10% of an anchor-shape training step). The same numbers come from writing each half
of the output directly::

    out1 = t1 * cos1 - t2 * sin1        out2 = t2 * cos2 + t1 * sin2

and the backward (the transpose of that 2x2 rotation) has the same form. :func:`apply_rotary_pos_emb`
has megatron's signature; the cases it does not cover (packed sequences, interleaved or multi-latent
RoPE, TE's fused kernel, a differentiable ``freqs``) and models with the fast paths off
(``model.fast_paths=false``) go to megatron's own function. The ``fast_paths.rope`` patch of
:mod:`nemo_rpo.patches` (installed by :func:`~nemo_rpo.models.gpt.layer_spec`) points megatron's attention
module at it; it is pure torch, so it runs on CPU and GPU alike.
"""

from __future__ import annotations

import torch
from megatron.core.models.common.embeddings import rope_utils

from nemo_rpo.patches import fast_paths_enabled

__all__ = ["apply_rotary_pos_emb", "rotate"]

_MEGATRON_APPLY = rope_utils.apply_rotary_pos_emb


def _rotate_halves(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float, out: torch.Tensor
) -> None:
    """``out[:h] = x1 c1 - sign x2 s1``, ``out[h:] = x2 c2 + sign x1 s2`` over the last dim (``2h``)."""
    h = cos.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h : 2 * h]
    o1, o2 = out[..., :h], out[..., h : 2 * h]
    torch.mul(x1, cos[..., :h], out=o1)
    o1.addcmul_(x2, sin[..., :h], value=-sign)
    torch.mul(x2, cos[..., h:], out=o2)
    o2.addcmul_(x1, sin[..., h:], value=sign)


class _Rotate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        rot = cos.shape[-1]
        out = torch.empty(t.shape, dtype=t.dtype, device=t.device)
        _rotate_halves(t, cos, sin, 1.0, out)
        if rot < t.shape[-1]:
            out[..., rot:] = t[..., rot:]
        ctx.save_for_backward(cos, sin)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        cos, sin = ctx.saved_tensors
        rot = cos.shape[-1]
        grad_t = torch.empty(grad.shape, dtype=grad.dtype, device=grad.device)
        # The rotation's transpose: the same halves with the sine's sign flipped.
        _rotate_halves(grad, cos, sin, -1.0, grad_t)
        if rot < grad.shape[-1]:
            grad_t[..., rot:] = grad[..., rot:]
        return grad_t, None, None


def rotate(t: torch.Tensor, freqs: torch.Tensor, mscale: float = 1.0) -> torch.Tensor:
    """Non-interleaved RoPE of ``t`` ``[s, ..., d]`` by ``freqs`` ``[s, ..., rot]`` (``rot <= d``, even).

    Equal to megatron's ``_apply_rotary_pos_emb_bshd(t, freqs, mscale=mscale)``; returns a new
    contiguous tensor (the input may be a strided view, such as q/k split from the fused QKV output).
    """
    cos = (torch.cos(freqs) * mscale).to(t.dtype)
    sin = (torch.sin(freqs) * mscale).to(t.dtype)
    return _Rotate.apply(t, cos, sin)


def apply_rotary_pos_emb(t, freqs, config, cu_seqlens=None, mscale: float = 1.0, cp_group=None):  # noqa: ANN001, ANN201
    """Drop-in for megatron's ``rope_utils.apply_rotary_pos_emb``: :func:`rotate` where it applies."""
    if (
        not fast_paths_enabled(config)
        or config.apply_rope_fusion
        or cu_seqlens is not None
        or config.rotary_interleaved
        or config.multi_latent_attention
        or freqs.requires_grad
        or freqs.shape[-1] % 2
        or freqs.shape[-1] > t.shape[-1]
    ):
        return _MEGATRON_APPLY(t, freqs, config, cu_seqlens=cu_seqlens, mscale=mscale, cp_group=cp_group)
    return rotate(t, freqs, mscale)
