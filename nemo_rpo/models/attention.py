"""Core attention through ``torch.nn.functional.scaled_dot_product_attention`` for the local spec.

Megatron's local ``DotProductAttention`` materialises the ``[b, np, s, s]`` score tensor (baddbmm into a
global buffer, masked softmax in fp32, bmm) — on CPU that was ~45% of an anchor-shape training step.
PyTorch's SDPA runs a fused flash kernel on CPU and on GPU (no ``s x s`` tensor, causal blocks skipped),
with the same mathematics. This module is a drop-in ``core_attention`` for megatron's ``SelfAttention``:
same constructor (it reuses ``DotProductAttention.__init__`` for head counts, scale and dropout), same
``[s, b, np, hn] -> [s, b, np * hn]`` contract. Features SDPA does not express (softmax offsets, sliding
windows, query-key layer scaling) fall back to megatron's implementation.

It also runs packed shared-prompt batches (``model.share_prompt``): the ``attention_mask`` is then the
batch's long layout tensor, and the rows' R sequences are attended one by one
(:mod:`nemo_rpo.models.shared_prompt`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType

from nemo_rpo.models.shared_prompt import is_layout, to_packed, to_sequences

__all__ = ["SDPAttention"]


# The CPU flash kernel runs forward + backward ~6% faster on contiguous ``[b, n, s, d]`` inputs than on
# the strided views of megatron's ``[s, b, n, d]`` (copies included; same numbers): 71.6 -> 67.0 ms for
# one anchor-shape layer (16 x 8 heads x 256 x 32). GPU kernels take the views as they are.
CONTIGUOUS_ON_CPU = True


class SDPAttention(DotProductAttention):
    """``DotProductAttention`` with a fused SDPA kernel; see the module docstring."""

    def _unsupported(self, attention_mask, attn_mask_type, attention_bias, packed_seq_params) -> bool:
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        return (
            self.softmax_offset is not None
            or self.scale_mask_softmax.window_size is not None
            or self.config.apply_query_key_layer_scaling
            or attention_bias is not None
            or packed_seq_params is not None
            or mask_type not in (AttnMaskType.causal, AttnMaskType.padding, AttnMaskType.no_mask)
        )

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        if is_layout(attention_mask):
            if self._unsupported(None, AttnMaskType.causal, attention_bias, packed_seq_params):
                raise ValueError("model.share_prompt: the shared-prompt layout needs plain causal attention "
                                 "(no softmax offset, window, query-key layer scaling, bias or packed THD)")  # fmt: skip
            return self._forward_shared_prompt(query, key, value, attention_mask)
        if self._unsupported(attention_mask, attn_mask_type, attention_bias, packed_seq_params):
            return super().forward(query, key, value, attention_mask, attn_mask_type, attention_bias,
                                   packed_seq_params)  # fmt: skip
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        sq, b, heads, dim = query.shape
        sk = key.shape[0]
        # [s, b, n, d] -> [b, n, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        is_causal, mask = False, None
        if attention_mask is not None:
            mask = ~attention_mask  # megatron: True = masked out; SDPA: True = attend
        elif mask_type == AttnMaskType.causal:
            if sq == sk:
                is_causal = True
            else:  # queries are the last sq positions (decoding with a KV cache): bottom-right aligned
                mask = torch.ones(sq, sk, dtype=torch.bool, device=query.device).tril(diagonal=sk - sq)
        out = self._sdpa(q, k, v, mask, is_causal)
        # [b, n, sq, d] -> [sq, b, n * d]
        return out.permute(2, 0, 1, 3).reshape(sq, b, heads * dim)

    def _forward_shared_prompt(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layout: torch.Tensor
    ) -> torch.Tensor:
        """Packed ``[W, B, n, d]`` q/k/v -> the R causal sequences of each row -> packed ``[W, B, n * d]``."""
        width, b, heads, dim = query.shape
        # [W, B, n, d] -> [B*R, T, n, d] -> [B*R, n, T, d]
        q, k, v = (to_sequences(t, layout).transpose(1, 2) for t in (query, key, value))
        out = self._sdpa(q, k, v, None, True)
        # [B*R, n, T, d] -> [B*R, T, n * d] -> [W, B, n * d]
        out = out.transpose(1, 2).reshape(layout.shape[0], layout.shape[1], heads * dim)
        return to_packed(out, layout, (width, b))

    def _sdpa(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, is_causal: bool
    ) -> torch.Tensor:
        """SDPA over ``[b, n, s, d]`` q and ``[b, ng, s, d]`` k/v (GQA groups repeated here)."""
        groups = self.num_attention_heads_per_partition // self.num_query_groups_per_partition
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        if q.device.type == "cpu" and CONTIGUOUS_ON_CPU:
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        dropout = self.attention_dropout.p if self.training else 0.0
        if dropout > 0 and not self.config.sequence_parallel:
            with tensor_parallel.get_cuda_rng_tracker().fork():
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                      is_causal=is_causal, scale=self.softmax_scale)  # fmt: skip
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal, scale=self.softmax_scale
        )
