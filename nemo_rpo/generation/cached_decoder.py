"""A one-token-at-a-time decoder for a single-stage GPTModel, with a preallocated, rotated KV cache.

megatron's static inference path (``StaticInferenceContext``) is general but costs, per layer and per
token: it caches keys *before* RoPE and rotates the whole cache again at every step (cos and sin of the
full table included), and the core attention repeats the cached keys and values for every query head
of a group (GQA). On SmolLM2-135M (30 layers, 9 heads / 3 KV heads) sampling 8 x 4 x 128 tokens on a
CPU, a torch.profiler run put ~36% of the time in those RoPE products and ~14% in the GQA copies,
against 26% in the matmuls.

:class:`CachedDecoder` runs the same modules (embedding, norms, fused QKV, output projection, MLP,
output layer: the training weights in place) and does the attention itself:

- keys are rotated once, when written, into a cache ``[N, groups, max_len, d]`` per layer (queries
  too, at their own position), using :func:`nemo_rpo.models.rope.rotate`, the training path's RoPE;
- a one-token step writes its key/value in place and attends with the group's query heads as the
  query "sequence" (``[N, groups, q_per_group, d]`` against the group's ``[N, groups, len, d]`` keys),
  so GQA needs no repeated keys;
- prefill runs causal SDPA over the prompts, as the training forward does.

Prefill can run once per distinct prompt and its cache be expanded to the K samples of that prompt
(:meth:`CachedDecoder.prefill` with ``repeats``): the generation twin of ``model.share_prompt``.

It covers what a single-process model with the local spec looks like (TP = PP = 1, RoPE or no position
embedding, plain self-attention, dense MLP); :func:`unsupported` names anything else, and
:func:`~nemo_rpo.generation.megatron_generator.generate` then keeps megatron's inference path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp

from nemo_rpo.models.rope import rotate

__all__ = ["CachedDecoder", "unsupported"]


def _inner(chunk: torch.nn.Module) -> torch.nn.Module:
    """The GPTModel inside DDP / Float16Module wrappers."""
    module = chunk
    while hasattr(module, "module") and not hasattr(module, "decoder"):
        module = module.module
    return module


def _identity(module: torch.nn.Module | None) -> bool:
    return module is None or isinstance(module, IdentityOp)


def unsupported(chunk: torch.nn.Module) -> str | None:
    """Why :class:`CachedDecoder` cannot run ``chunk`` (None when it can)."""
    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        return "tensor parallelism"
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        return "pipeline parallelism"
    model = _inner(chunk)
    if model is not chunk and type(chunk).__name__ == "Float16Module":
        return "a Float16Module wrapper"
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "decoder") or not hasattr(model, "embedding"):
        return "not a megatron GPTModel"
    if not (model.pre_process and model.post_process):
        return "not a whole model"
    if getattr(model, "position_embedding_type", None) != "rope":
        return "position embeddings other than RoPE"
    if config.rotary_interleaved or config.multi_latent_attention or config.apply_rope_fusion:
        return "interleaved, fused or multi-latent RoPE"
    if config.sequence_parallel or config.context_parallel_size > 1 or config.mtp_num_layers:
        return "sequence/context parallelism or multi-token prediction"
    if config.apply_residual_connection_post_layernorm or config.fp32_residual_connection:
        return "a non-standard residual connection"
    if config.apply_query_key_layer_scaling or config.num_moe_experts:
        return "query-key layer scaling or MoE"
    if model.decoder.final_layernorm is None or len(model.decoder.layers) == 0:
        return "no final layer norm"
    for layer in model.decoder.layers:
        attn = layer.self_attention
        core = getattr(attn, "core_attention", None)
        if (
            type(attn).__name__ != "SelfAttention"
            or core is None
            or not hasattr(core, "softmax_scale")
            or getattr(core, "softmax_offset", None) is not None
            or getattr(getattr(core, "scale_mask_softmax", None), "window_size", None) is not None
            or core.attn_mask_type != AttnMaskType.causal
            or not _identity(getattr(attn, "q_layernorm", None))
            or not _identity(getattr(attn, "k_layernorm", None))
            or not _identity(layer.cross_attention)
            or type(layer.mlp).__name__ != "MLP"
            or type(layer).__name__ != "TransformerLayer"
        ):
            return f"layer {layer.layer_number}: not plain causal self-attention + dense MLP"
    return None


def _add(
    out: tuple[torch.Tensor, torch.Tensor | None] | torch.Tensor, residual: torch.Tensor
) -> torch.Tensor:
    """megatron's bias-dropout-add in eval mode: ``residual + (out + bias)``."""
    x, bias = out if isinstance(out, tuple) else (out, None)
    if bias is not None:
        x = x + bias
    return residual + x


class CachedDecoder:
    """Prefill + one-token steps of a whole GPTModel (see the module docstring); ``torch.no_grad()`` use.

    Args:
        chunk: the model (wrappers allowed; :func:`unsupported` must return None for it).
        rows: N, the batch after any prefill expansion.
        max_len: positions the cache holds.
    """

    def __init__(self, chunk: torch.nn.Module, rows: int, max_len: int) -> None:
        self.model = model = _inner(chunk)
        self.layers = list(model.decoder.layers)
        first = self.layers[0].self_attention
        self.groups = first.num_query_groups_per_partition
        self.heads = first.num_attention_heads_per_partition
        self.head_dim = first.hidden_size_per_attention_head
        self.rows, self.max_len = rows, max_len
        weight = model.embedding.word_embeddings.weight
        self.device, self.dtype = weight.device, weight.dtype
        # [max_len, 1, 1, rot] -> cos/sin computed once per call, not per layer and step.
        freqs = model.rotary_pos_emb(max_len)
        self.freqs = freqs
        shape = (rows, self.groups, max_len, self.head_dim)
        self.keys = [torch.empty(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        self.values = [torch.empty(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        self.length = 0
        self.output_weight = (
            model.shared_embedding_or_output_weight() if model.share_embeddings_and_output_weights else None
        )

    def _split_qkv(self, hidden: torch.Tensor, attn: torch.nn.Module) -> tuple[torch.Tensor, ...]:
        """``[s, b, h]`` -> q ``[s, b, heads, d]``, k and v ``[s, b, groups, d]`` (megatron's QKV layout)."""
        mixed, bias = attn.linear_qkv(hidden)
        if bias is not None:
            mixed = mixed + bias
        s, b = mixed.shape[:2]
        per_group = self.heads // self.groups
        mixed = mixed.view(s, b, self.groups, per_group + 2, self.head_dim)
        q = mixed[:, :, :, :per_group].reshape(s, b, self.heads, self.head_dim)
        return q, mixed[:, :, :, per_group], mixed[:, :, :, per_group + 1]

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary float logits ``[b, V]`` of the last position of ``hidden`` ``[s, b, h]``."""
        x = self.model.decoder.final_layernorm(hidden[-1:])
        logits, _ = self.model.output_layer(x, weight=self.output_weight)
        return logits[0].float()

    def prefill(self, input_ids: torch.Tensor, repeats: int = 1) -> torch.Tensor:
        """Run the prompts ``[b, s]`` (positions ``0..s-1``); the cache rows ``r*repeats .. (r+1)*repeats-1``
        all get prompt ``r``'s keys and values (``b * repeats == rows``). Returns ``[rows, V]`` logits."""
        b, s = input_ids.shape
        assert b * repeats == self.rows and s <= self.max_len
        positions = torch.arange(s, device=self.device).expand(b, -1)
        hidden = self.model.embedding(input_ids=input_ids.to(self.device), position_ids=positions)
        freqs = self.freqs[:s]
        per_group = self.heads // self.groups
        for layer, keys, values in zip(self.layers, self.keys, self.values):
            attn = layer.self_attention
            q, k, v = self._split_qkv(layer.input_layernorm(hidden), attn)
            q, k = rotate(q, freqs), rotate(k, freqs)
            # [s, b, n, d] -> [b, n, s, d]
            k, v = k.permute(1, 2, 0, 3), v.permute(1, 2, 0, 3)
            if repeats == 1:
                keys[:, :, :s] = k
                values[:, :, :s] = v
            else:
                keys[:, :, :s] = k.repeat_interleave(repeats, dim=0)
                values[:, :, :s] = v.repeat_interleave(repeats, dim=0)
            q = q.permute(1, 2, 0, 3).contiguous()
            k = k.repeat_interleave(per_group, dim=1).contiguous()
            v = v.repeat_interleave(per_group, dim=1).contiguous()
            context = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=attn.core_attention.softmax_scale
            )
            # [b, heads, s, d] -> [s, b, heads * d]
            context = context.permute(2, 0, 1, 3).reshape(s, b, self.heads * self.head_dim)
            hidden = _add(attn.linear_proj(context), hidden)
            hidden = _add(layer.mlp(layer.pre_mlp_layernorm(hidden)), hidden)
        self.length = s
        logits = self._logits(hidden)
        return logits if repeats == 1 else logits.repeat_interleave(repeats, dim=0)

    def step(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Feed one token per row ``[rows]`` at the next position; returns ``[rows, V]`` logits."""
        pos = self.length
        assert pos < self.max_len
        ids = input_ids.to(self.device).view(self.rows, 1)
        positions = torch.full_like(ids, pos)
        hidden = self.model.embedding(input_ids=ids, position_ids=positions)  # [1, N, h]
        freqs = self.freqs[pos : pos + 1]
        per_group = self.heads // self.groups
        for layer, keys, values in zip(self.layers, self.keys, self.values):
            attn = layer.self_attention
            q, k, v = self._split_qkv(layer.input_layernorm(hidden), attn)
            keys[:, :, pos] = rotate(k, freqs)[0]
            values[:, :, pos] = v[0]
            # The group's query heads are the query "sequence" of its keys: no repeated keys for GQA.
            q = rotate(q, freqs)[0].view(self.rows, self.groups, per_group, self.head_dim)
            context = F.scaled_dot_product_attention(q, keys[:, :, : pos + 1], values[:, :, : pos + 1],
                                                     scale=attn.core_attention.softmax_scale)  # fmt: skip
            context = context.reshape(1, self.rows, self.heads * self.head_dim)
            hidden = _add(attn.linear_proj(context), hidden)
            hidden = _add(layer.mlp(layer.pre_mlp_layernorm(hidden)), hidden)
        self.length = pos + 1
        return self._logits(hidden)
