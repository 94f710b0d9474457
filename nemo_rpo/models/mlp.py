"""SwiGLU in megatron's ``MLP`` as one autograd function (the ``fast_paths.swiglu`` patch).

With ``bias_activation_fusion=False`` (the local spec's setting: the fused kernel is a ``torch.compile``
function) megatron computes ``silu(x_glu) * (x_linear + glu_linear_offset)`` through autograd: the
offset add copies half of fc1's output, and the backward of ``torch.chunk`` concatenates the two half
gradients into a new tensor. :class:`_SwiGLU` keeps the same ATen kernels (``silu``, ``mul``,
``silu_backward``) but writes both halves of the input gradient straight into one buffer and skips the
copy, so values and gradients are bit-identical (tests/unit/models/test_fast_paths.py). Any other
setting (another activation, clamping, a non-zero offset, per-token scales, TE activations, the fused
path) goes to megatron's forward unchanged, and so does every model whose ``TransformerConfig`` has the
fast paths off (``model.fast_paths=false``). Like :mod:`~nemo_rpo.models.rope`, :func:`forward` replaces
megatron's ``MLP.forward`` in place (installed by :func:`~nemo_rpo.models.gpt.layer_spec` through
:mod:`nemo_rpo.patches`) rather than subclassing ``MLP``: megatron's ``TransformerLayer`` passes the TP
group only to a spec whose module is ``MLP`` itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.mlp import MLP

from nemo_rpo.patches import fast_paths_enabled

__all__ = ["forward"]

_MEGATRON_FORWARD = MLP.forward


class _SwiGLU(torch.autograd.Function):
    """``silu(a) * b`` for ``a, b = x.chunk(2, -1)``; the gradient is one ``[..., 2f]`` tensor, no ``cat``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - autograd context
        a, b = torch.chunk(x, 2, dim=-1)
        silu = F.silu(a)
        ctx.save_for_backward(x, silu)
        return silu * b

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - autograd context
        x, silu = ctx.saved_tensors
        a, b = torch.chunk(x, 2, dim=-1)
        grad_x = torch.empty_like(x)
        grad_a, grad_b = torch.chunk(grad_x, 2, dim=-1)
        torch.mul(grad, silu, out=grad_b)
        torch.ops.aten.silu_backward.grad_input(grad * b, a, grad_input=grad_a)
        return grad_x


def _plain_swiglu(mlp: MLP, per_token_scale: torch.Tensor | None) -> bool:
    c = mlp.config
    return (
        fast_paths_enabled(c)
        and c.gated_linear_unit
        and c.activation_func is F.silu
        and mlp.activation_func is F.silu
        and not c.bias_activation_fusion
        and not c.use_te_activation_func
        and c.activation_func_clamp_value is None
        and c.glu_linear_offset == 0.0
        and per_token_scale is None
    )


def forward(self: MLP, hidden_states: torch.Tensor, per_token_scale: torch.Tensor | None = None, **kwargs):
    """``MLP.forward`` with the plain SwiGLU case through :class:`_SwiGLU`; megatron's otherwise."""
    if not _plain_swiglu(self, per_token_scale):
        return _MEGATRON_FORWARD(self, hidden_states, per_token_scale, **kwargs)
    intermediate, bias = self.linear_fc1(hidden_states)
    if bias is not None:
        intermediate = intermediate + bias
    return self.linear_fc2(_SwiGLU.apply(intermediate))
