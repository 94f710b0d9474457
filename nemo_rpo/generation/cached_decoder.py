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

Where every layer is the plain kind (torch norms, megatron's own linear layers, SwiGLU or an elementwise
activation: :meth:`_LeanLayer.applies`) a one-token step runs as plain tensor operations
(:meth:`CachedDecoder._lean_step`): no megatron module machinery per layer, residual adds fused into
the products, and on the CPU the weights as copies made once per call: contiguous ``[in, out]`` in
fp32, which MKL multiplies faster at decode shapes than megatron's ``[out, in]`` layout, and oneDNN's
packed layout in bf16 and, on CPUs other than Intel's, in fp32 (the LM head's too). On SmolLM2-135M (one
thread, 32 rows, position ~100) a step went from 178 to 126 ms; the per-op profile is in
benchmarks/README.md (sampling). Anything else steps through the modules as before.

Prefill can run once per distinct prompt for the K samples of that prompt (:meth:`CachedDecoder.prefill`
with ``repeats``): the generation twin of ``model.share_prompt``. Where the step does the attention as
products (fp32 on the CPU: :func:`_decode_attention`), the prompt's keys and values are then also kept
once, not K times, and each step reads them once for the prompt's K rows
(:func:`_prompt_shared_attention`): K times less cache for the prompt and K times fewer reads of it. On
SmolLM2-135M (8 prompts x K = 4, fp32, 2 threads, AMD EPYC) a step at column 274 after 210-token prompts
took 143.6 instead of 156.7 ms (1.09x); after 40-token prompts the same within noise (0.99x):
benchmarks/README.md, session 21.

It covers what a single-process model with the local spec looks like (TP = PP = 1, RoPE or no position
embedding, plain self-attention, dense MLP); :func:`unsupported` names anything else, and
:func:`~nemo_rpo.generation.megatron_generator.generate` then keeps megatron's inference path.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp

from nemo_rpo.distributed import cpu_support
from nemo_rpo.models.rope import _rotate_halves, rotate

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


def _plain_linear(module: torch.nn.Module, kind: str) -> bool:
    """megatron's own ``ColumnParallelLinear`` / ``RowParallelLinear`` (no LoRA or TE subclass), 2-D weight."""
    weight = getattr(module, "weight", None)
    return type(module).__name__ == kind and isinstance(weight, torch.Tensor) and weight.dim() == 2


def _mlp_activation(mlp: torch.nn.Module) -> str | None:
    """``"swiglu"`` or ``"plain"`` where :meth:`CachedDecoder.step` can compute the MLP's activation
    itself with megatron's numbers; None otherwise (the module's own forward then runs)."""
    c = mlp.config
    if c.bias_activation_fusion or getattr(c, "use_te_activation_func", False):
        return None
    if getattr(c, "activation_func_clamp_value", None) is not None or getattr(c, "glu_linear_offset", 0.0):
        return None
    if c.gated_linear_unit:
        return "swiglu" if mlp.activation_func is F.silu else None
    return "plain"


def _norm_function(norm: torch.nn.Module):  # noqa: ANN202 - a Tensor -> Tensor callable
    """``norm``'s forward as one functional call (torch's ``RMSNorm``/``LayerNorm`` modules as they come;
    a subclass with its own forward keeps it): the module call's own Python costs ~15 us per norm, 60 per
    decoding step of a 30-layer model."""
    if type(norm).forward is torch.nn.RMSNorm.forward:
        return functools.partial(
            F.rms_norm, normalized_shape=norm.normalized_shape, weight=norm.weight, eps=norm.eps
        )
    if type(norm).forward is torch.nn.LayerNorm.forward:
        return functools.partial(F.layer_norm, normalized_shape=norm.normalized_shape, weight=norm.weight,
                                 bias=norm.bias, eps=norm.eps)  # fmt: skip
    return norm


def _decode_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, attn_mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """SDPA for a few queries per (row, group) ``q [N, g, p, d]`` over cached ``keys``/``values``
    ``[N, g, L, d]``, as two batched products and a softmax: ATen's CPU SDPA costs 0.47-1.05 ms per call
    for SmolLM2-135M's 32 x 3 x 3 queries over 64-192 keys, this 0.25-0.83 ms (AMD EPYC, 2 threads;
    ``/tmp``-style microbenchmark, session 20). ``attn_mask``: additive ``[N, 1, 1, L]`` or ``None``."""
    scores = torch.matmul(q, keys.transpose(-1, -2))
    if scale != 1.0:
        scores.mul_(scale)
    if attn_mask is not None:
        scores.add_(attn_mask)
    return torch.matmul(torch.softmax(scores, dim=-1), values)


def _prompt_shared_attention(
    q: torch.Tensor,
    prompt_keys: torch.Tensor,
    prompt_values: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    prompt_mask: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """:func:`_decode_attention` for rows that are K samples of B prompts (row r of prompt r // K), with
    the prompts' keys/values kept once per prompt. ``q [g, N, p, d]``: a few queries per (group, row);
    ``prompt_keys``/``prompt_values`` ``[g, B, P, d]``; the rows' own (generated) ``keys``/``values``
    ``[g, N, t, d]``; ``prompt_mask`` additive ``[1, B, 1, P]`` (left padding) or None. Returns
    ``[g, N, p, d]``.

    A prompt's K rows are one product's K * p query rows against its keys, which are read once instead of K
    times; the scores of both parts go through one softmax (concatenated), so the numbers are those of
    attention over each row's whole cache up to the order of the products' sums."""
    g, n, p, d = q.shape
    b, width, t = prompt_keys.shape[1], prompt_keys.shape[2], keys.shape[2]
    per_prompt = (g, b, n // b * p)  # [g, N, p] -> each prompt's K rows' queries as one product's rows
    prompt_scores = torch.matmul(q.view(*per_prompt, d), prompt_keys.transpose(-1, -2))
    if prompt_mask is not None:
        prompt_scores.add_(prompt_mask)
    scores = torch.cat([prompt_scores.view(g, n, p, width), torch.matmul(q, keys.transpose(-1, -2))], dim=-1)
    if scale != 1.0:
        scores.mul_(scale)
    weights = torch.softmax(scores, dim=-1)
    out = torch.matmul(weights[..., :width].view(*per_prompt, width), prompt_values).view(g * n, p, d)
    out.baddbmm_(weights[..., width:].reshape(g * n, p, t), values.reshape(g * n, t, d))
    return out.view(g, n, p, d)


def _packed_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W^T + bias`` for a weight in oneDNN's packed layout (``torch.ops.mkldnn._reorder_linear_weight``)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _LeanLayer:
    """One layer's weights as :meth:`CachedDecoder.step` reads them: the products' operands and biases.

    On the CPU the four products' weights are copies made once per :class:`CachedDecoder`. fp32:
    transposed, ``[in, out]`` contiguous: MKL's fp32 GEMM at the decode shapes (``[N, 576] x [576, 3072]``
    with N = 32 rows) runs 1.2-1.4x faster on it than on the transposed view of megatron's ``[out, in]``
    weight (Intel Xeon); on other CPUs (:func:`~nemo_rpo.distributed.cpu_support.packed_fp32_decoding`)
    oneDNN's packed layout instead, ~1.75x faster than MKL there. bf16: oneDNN's packed (blocked) layout
    for N rows (``packed``), which its bf16 products at these shapes take 1.4-1.5x faster than either
    plain layout, with no reordering per call (benchmarks/README.md, sampling). Same products, fp32
    accumulation. Elsewhere (GPU) the operands are views of the weights, no copy.
    """

    def __init__(self, layer: torch.nn.Module, copy: bool, packed: bool, rows: int) -> None:
        attn, mlp = layer.self_attention, layer.mlp
        self.packed = packed

        def operand(linear: torch.nn.Module) -> torch.Tensor:
            if self.packed:  # [out, in] -> oneDNN's blocked layout for `rows`-row products
                return torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows)
            w = linear.weight.detach().t()
            return w.contiguous() if copy else w

        self.input_norm, self.mlp_norm = (
            _norm_function(layer.input_layernorm),
            _norm_function(layer.pre_mlp_layernorm),
        )
        self.qkv, self.qkv_bias = operand(attn.linear_qkv), attn.linear_qkv.bias
        self.proj, self.proj_bias = operand(attn.linear_proj), attn.linear_proj.bias
        self.fc1, self.fc1_bias = operand(mlp.linear_fc1), mlp.linear_fc1.bias
        self.fc2, self.fc2_bias = operand(mlp.linear_fc2), mlp.linear_fc2.bias
        self.activation = _mlp_activation(mlp)
        self.activation_func = mlp.activation_func
        self.scale = attn.core_attention.softmax_scale

    def product(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``x @ W + bias`` for one of this layer's operands."""
        if self.packed:
            return _packed_product(x, weight, bias)
        return torch.mm(x, weight) if bias is None else torch.addmm(bias, x, weight)

    def residual_product(
        self, residual: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """``residual + (x @ W + bias)``: megatron's linear layer and bias-dropout-add in eval mode, the
        add fused into the product where the layout allows."""
        if self.packed:  # oneDNN adds the residual to its fp32 accumulator: the same sum as add_ after
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, bias, "add")
        if bias is None:
            return torch.addmm(residual, x, weight)
        return residual + torch.addmm(bias, x, weight)

    @staticmethod
    def applies(layer: torch.nn.Module) -> bool:
        attn, mlp = layer.self_attention, layer.mlp
        norms = (torch.nn.RMSNorm, torch.nn.LayerNorm)
        return (
            isinstance(layer.input_layernorm, norms)
            and isinstance(layer.pre_mlp_layernorm, norms)
            and _plain_linear(attn.linear_qkv, "ColumnParallelLinear")
            and _plain_linear(attn.linear_proj, "RowParallelLinear")
            and _plain_linear(mlp.linear_fc1, "ColumnParallelLinear")
            and _plain_linear(mlp.linear_fc2, "RowParallelLinear")
            and _mlp_activation(mlp) is not None
        )


class CachedDecoder:
    """Prefill + one-token steps of a whole GPTModel (see the module docstring); ``torch.no_grad()`` use.

    Args:
        chunk: the model (wrappers allowed; :func:`unsupported` must return None for it).
        rows: N, the batch after any prefill expansion.
        max_len: positions the cache holds.
    """

    transpose_weights = True  # CPU: the layers' weights as contiguous [in, out] copies (see _LeanLayer)

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
        # The cache, allocated by prefill: per layer, keys and values [N, groups, max_len, d]; or, where
        # prefill keeps each prompt's once for its K rows, prompt_keys/prompt_values [groups, B, P, d] (the
        # P prompt columns) and keys/values [groups, N, max_len - P, d] (the rows' own, from offset = P on).
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.prompt_keys: list[torch.Tensor] | None = None
        self.prompt_values: list[torch.Tensor] | None = None
        self.prompt_mask: torch.Tensor | None = None  # [1, B, 1, P] additive: -inf at a prompt's pads
        self.offset = 0
        self.length = 0
        # Left padding (prefill's ``pads``): row r's tokens start at column pads[r] with position 0, and
        # its keys before that column are masked. None: no padding, no mask (the plain causal path).
        self.pads: torch.Tensor | None = None
        self.key_mask: torch.Tensor | None = None  # [N, 1, 1, max_len] bool, True = a key to attend to
        self.output_weight = (
            model.shared_embedding_or_output_weight() if model.share_embeddings_and_output_weights else None
        )
        # The one-token step's fast path (:meth:`_lean_step`): the layers' weights as [in, out] operands,
        # RoPE's cos/sin at every position computed once, and a buffer for the rotated queries and key.
        on_cpu = self.device.type == "cpu"
        self.lean = None
        self.decode_attention = False
        if all(_LeanLayer.applies(layer) for layer in self.layers):
            copy = on_cpu and self.transpose_weights
            packed = copy and cpu_support.packed_decoding(self.dtype)  # oneDNN's packed operands (_LeanLayer)
            self.lean = [_LeanLayer(layer, copy=copy, packed=packed, rows=rows) for layer in self.layers]
            rot = freqs.shape[-1]
            # rotate()'s tables, (cos(freqs) * 1.0).to(dtype), for all positions at once: [max_len, rot]
            self.cos = torch.cos(freqs).to(self.dtype).reshape(max_len, rot)
            self.sin = torch.sin(freqs).to(self.dtype).reshape(max_len, rot)
            per_group = self.heads // self.groups
            # fp32 on the CPU: _decode_attention, with the softmax scale folded into the queries' rotation
            # (by_head [per_group + 1, 1] multiplies the tables: the queries scaled, the key not) where
            # every layer has the same scale and RoPE covers the whole head (no unrotated, unscaled tail)
            self.decode_attention = on_cpu and self.dtype == torch.float32
            scales = {lean.scale for lean in self.lean}
            self.by_head = None
            if self.decode_attention and rot == self.head_dim and len(scales) == 1:
                self.by_head = torch.ones(per_group + 1, 1, dtype=self.dtype, device=self.device)
                self.by_head[:per_group] = scales.pop()
            self.rotated = torch.empty(rows, self.groups, per_group + 1, self.head_dim, dtype=self.dtype,
                                       device=self.device)  # fmt: skip
            # the queries group-major, as _prompt_shared_attention takes them
            self.queries = torch.empty(self.groups, rows, per_group, self.head_dim, dtype=self.dtype,
                                       device=self.device)  # fmt: skip
        head = self.output_weight if self.output_weight is not None else model.output_layer.weight
        self.head = None  # [h, V] operand of the LM head where the step computes it itself
        out = model.output_layer
        if (
            type(out).__name__ == "ColumnParallelLinear"
            and getattr(out, "bias", None) is None
            and not out._forward_pre_hooks
            and not out._forward_hooks_with_kwargs
        ):
            self.head = head.detach().t()
            self.head_product = cpu_support._product if on_cpu else torch.matmul
            if self.lean is not None and self.lean[0].packed and self.dtype == torch.float32:
                self.head = torch.ops.mkldnn._reorder_linear_weight(head.detach(), rows)  # packed [V, h]
                self.head_product = _packed_product

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
        if self.head is not None:  # the output layer's product without megatron's module machinery
            logits = self.head_product(x[0], self.head)
            for hook in self.model.output_layer._forward_hooks.values():  # e.g. the padding mask
                result = hook(self.model.output_layer, (x[0],), (logits, None))
                logits = logits if result is None else result[0]
            return logits.float()
        logits, _ = self.model.output_layer(x, weight=self.output_weight)
        return logits[0].float()

    def prefill(
        self, input_ids: torch.Tensor, repeats: int = 1, pads: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run the prompts ``[b, s]`` (positions ``0..s-1``); the cache rows ``r*repeats .. (r+1)*repeats-1``
        all get prompt ``r``'s keys and values (``b * repeats == rows``), kept once for the ``repeats`` rows
        where the step attends by products (:func:`_prompt_shared_attention`). Returns ``[rows, V]`` logits.

        ``pads`` ``[b]``: prompt ``r`` is left-padded, its tokens in columns ``pads[r]..s-1`` at positions
        ``0..s-1-pads[r]``; its pad columns are masked out of every later query (each pad query attends
        to itself only, which keeps its numbers finite), so every row's last prompt token is column
        ``s-1`` and the one-token steps that follow advance all rows together."""
        b, s = input_ids.shape
        assert b * repeats == self.rows and s <= self.max_len and self.length == 0
        columns = torch.arange(s, device=self.device)
        if pads is not None and bool((pads == 0).all()):
            pads = None
        share = repeats > 1 and self.lean is not None and self.decode_attention
        self._allocate(b if share else 0, s)
        mask = None
        if pads is None:
            positions = columns.expand(b, -1)
            freqs = self.freqs[:s]
        else:
            pads = pads.to(self.device)
            positions = (columns - pads[:, None]).clamp_min(0)  # [b, s]
            freqs = self.freqs.view(self.max_len, -1)[positions.t()].unsqueeze(2)  # [s, b, 1, rot]
            keys_ok = columns[None, :] >= pads[:, None]  # [b, s]: a real (not pad) key column
            causal = columns[None, :] <= columns[:, None]  # [s (query), s (key)]
            mask = (causal & keys_ok[:, None, :]) | torch.eye(s, dtype=torch.bool, device=self.device)
            mask = mask[:, None]  # [b, 1, s, s]
            self.pads = pads.repeat_interleave(repeats)
            if share:  # the prompts' own columns only: the rows' generated keys are never pads
                self.prompt_mask = torch.zeros(1, b, 1, s, dtype=self.dtype, device=self.device)
                self.prompt_mask.masked_fill_(~keys_ok[None, :, None], -math.inf)
            else:
                key_ok = torch.arange(self.max_len, device=self.device) >= self.pads[:, None]
                self.key_mask = key_ok[:, None, None]
        hidden = self.model.embedding(input_ids=input_ids.to(self.device), position_ids=positions)
        per_group = self.heads // self.groups
        for i, layer in enumerate(self.layers):
            attn = layer.self_attention
            q, k, v = self._split_qkv(layer.input_layernorm(hidden), attn)
            q, k = rotate(q, freqs), rotate(k, freqs)
            # [s, b, n, d] -> [b, n, s, d]
            k, v = k.permute(1, 2, 0, 3), v.permute(1, 2, 0, 3)
            keys, values = self.keys[i], self.values[i]
            if share:  # [groups, b, s, d], once per prompt
                self.prompt_keys[i].copy_(k.transpose(0, 1))
                self.prompt_values[i].copy_(v.transpose(0, 1))
            elif repeats == 1:
                keys[:, :, :s] = k
                values[:, :, :s] = v
            else:
                keys[:, :, :s] = k.repeat_interleave(repeats, dim=0)
                values[:, :, :s] = v.repeat_interleave(repeats, dim=0)
            q = q.permute(1, 2, 0, 3).contiguous()
            k = k.repeat_interleave(per_group, dim=1).contiguous()
            v = v.repeat_interleave(per_group, dim=1).contiguous()
            context = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None, scale=attn.core_attention.softmax_scale
            )
            # [b, heads, s, d] -> [s, b, heads * d]
            context = context.permute(2, 0, 1, 3).reshape(s, b, self.heads * self.head_dim)
            hidden = _add(attn.linear_proj(context), hidden)
            hidden = _add(layer.mlp(layer.pre_mlp_layernorm(hidden)), hidden)
        self.length = s
        logits = self._logits(hidden)
        return logits if repeats == 1 else logits.repeat_interleave(repeats, dim=0)

    def _allocate(self, prompts: int, width: int) -> None:
        """The cache (see ``__init__``): with ``prompts`` > 0, ``width`` prompt columns kept once per prompt."""
        empty = functools.partial(torch.empty, dtype=self.dtype, device=self.device)
        d, rows = self.head_dim, self.rows
        if prompts:
            shape = (self.groups, prompts, width, d)
            self.prompt_keys = [empty(shape) for _ in self.layers]
            self.prompt_values = [empty(shape) for _ in self.layers]
            self.offset, shape = width, (self.groups, rows, self.max_len - width, d)
        else:
            shape = (rows, self.groups, self.max_len, d)
        self.keys = [empty(shape) for _ in self.layers]
        self.values = [empty(shape) for _ in self.layers]

    def cached_kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every layer's cached keys and values as ``[N, groups, length, d]`` (copies where the prompts'
        are shared): what each row attends to, whatever the layout."""
        n = self.length
        if self.prompt_keys is None:
            return [(k[:, :, :n], v[:, :, :n]) for k, v in zip(self.keys, self.values)]
        repeats = self.rows // self.prompt_keys[0].shape[1]

        def whole(prompt: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
            prompt = prompt.repeat_interleave(repeats, dim=1)
            return torch.cat([prompt, own[:, :, : n - self.offset]], dim=2).transpose(0, 1)

        parts = zip(self.prompt_keys, self.prompt_values, self.keys, self.values)
        return [(whole(pk, k), whole(pv, v)) for pk, pv, k, v in parts]

    def _positions(self, pos: int) -> torch.Tensor | int:
        """The position of every row's token at cache column ``pos``: ``pos`` itself without left padding."""
        return pos if self.pads is None else pos - self.pads

    def step(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Feed one token per row ``[rows]`` at the next cache column; returns ``[rows, V]`` logits."""
        pos = self.length
        assert pos < self.max_len
        ids = input_ids.to(self.device).view(self.rows, 1)
        positions = self._positions(pos)
        position_ids = torch.full_like(ids, pos) if self.pads is None else positions[:, None]
        hidden = self.model.embedding(input_ids=ids, position_ids=position_ids)  # [1, N, h]
        if self.lean is not None:
            hidden = self._lean_step(hidden[0], pos)[None]
            self.length = pos + 1
            return self._logits(hidden)
        if self.pads is None:
            freqs = self.freqs[pos : pos + 1]
        else:  # [1, N, 1, rot]: each row at its own position
            freqs = self.freqs.view(self.max_len, -1)[positions][None, :, None]
        mask = None if self.key_mask is None else self.key_mask[..., : pos + 1]
        per_group = self.heads // self.groups
        for layer, keys, values in zip(self.layers, self.keys, self.values):
            attn = layer.self_attention
            q, k, v = self._split_qkv(layer.input_layernorm(hidden), attn)
            keys[:, :, pos] = rotate(k, freqs)[0]
            values[:, :, pos] = v[0]
            # The group's query heads are the query "sequence" of its keys: no repeated keys for GQA.
            q = rotate(q, freqs)[0].view(self.rows, self.groups, per_group, self.head_dim)
            context = F.scaled_dot_product_attention(q, keys[:, :, : pos + 1], values[:, :, : pos + 1],
                                                     attn_mask=mask, scale=attn.core_attention.softmax_scale)  # fmt: skip
            context = context.reshape(1, self.rows, self.heads * self.head_dim)
            hidden = _add(attn.linear_proj(context), hidden)
            hidden = _add(layer.mlp(layer.pre_mlp_layernorm(hidden)), hidden)
        self.length = pos + 1
        return self._logits(hidden)

    def _lean_step(self, hidden: torch.Tensor, pos: int) -> torch.Tensor:
        """:meth:`step`'s layers as plain tensor operations on ``hidden`` ``[N, h]`` (every layer
        :meth:`_LeanLayer.applies`): the same operations as the modules' forwards (norms as functional
        calls, fused QKV, RoPE by :func:`~nemo_rpo.models.rope._rotate_halves`, attention (SDPA; fp32 on
        the CPU :func:`_decode_attention`, the softmax scale folded into the queries' rotation), output
        projection, MLP, residual adds), without megatron's per-module Python (tensor-parallel region
        functions, autograd Functions, bias/dropout/add closures), each residual add fused into its
        product (``addmm``, or oneDNN's ``binary`` add), the queries and the new key rotated in one pass,
        the key and value written into the cache in place; where prefill kept each prompt's keys and
        values once for its K rows, the attention is :func:`_prompt_shared_attention`."""
        n, groups, d = self.rows, self.groups, self.head_dim
        per_group = self.heads // groups
        positions = self._positions(pos)
        cos, sin = self.cos[positions], self.sin[positions]
        if self.pads is not None:  # [N, rot] -> [N, 1, 1, rot]: each row at its own position
            cos, sin = cos[:, None, None], sin[:, None, None]
        mask = None if self.key_mask is None else self.key_mask[..., : pos + 1]
        attention = F.scaled_dot_product_attention
        if self.decode_attention:  # 1.3-1.9x faster than SDPA here
            attention = _decode_attention
            if mask is not None:  # [N, 1, 1, pos + 1] additive: 0 for a key to attend to, -inf for a pad
                mask = torch.zeros(mask.shape, dtype=self.dtype, device=self.device).masked_fill_(
                    ~mask, -math.inf
                )
        fold = self.by_head is not None
        if fold:  # one scaling product less per layer
            cos, sin = cos * self.by_head, sin * self.by_head  # [(N, 1,) per_group + 1, rot]
        rot = cos.shape[-1]
        qk = self.rotated  # [N, groups, per_group + 1, d]: the group's query heads, then its key
        for i, lean in enumerate(self.lean):
            mixed = lean.product(lean.input_norm(hidden), lean.qkv, lean.qkv_bias)
            mixed = mixed.view(n, groups, per_group + 2, d)
            _rotate_halves(mixed[:, :, : per_group + 1], cos, sin, 1.0, qk)
            if rot < d:
                qk[..., rot:] = mixed[:, :, : per_group + 1, rot:]
            scale = 1.0 if fold else lean.scale
            keys, values = self.keys[i], self.values[i]
            if self.prompt_keys is None:  # [N, groups, max_len, d]
                keys[:, :, pos] = qk[:, :, per_group]
                values[:, :, pos] = mixed[:, :, per_group + 1]
                # The group's query heads are the query "sequence" of its keys: no repeated keys for GQA.
                context = attention(qk[:, :, :per_group], keys[:, :, : pos + 1], values[:, :, : pos + 1],
                                    attn_mask=mask, scale=scale)  # fmt: skip
            else:  # [groups, N, max_len - offset, d] after the prompts' [groups, B, offset, d]
                t = pos - self.offset
                keys[:, :, t] = qk[:, :, per_group].transpose(0, 1)
                values[:, :, t] = mixed[:, :, per_group + 1].transpose(0, 1)
                q = self.queries.copy_(qk[:, :, :per_group].transpose(0, 1))
                context = _prompt_shared_attention(q, self.prompt_keys[i], self.prompt_values[i],
                                                   keys[:, :, : t + 1], values[:, :, : t + 1], self.prompt_mask,
                                                   scale).transpose(0, 1)  # fmt: skip
            context = context.reshape(n, self.heads * d)
            hidden = lean.residual_product(hidden, context, lean.proj, lean.proj_bias)
            x = lean.product(lean.mlp_norm(hidden), lean.fc1, lean.fc1_bias)
            if lean.activation == "swiglu":
                gate, up = torch.chunk(x, 2, dim=-1)
                x = F.silu(gate).mul_(up)
            else:
                x = lean.activation_func(x)
            hidden = lean.residual_product(hidden, x, lean.fc2, lean.fc2_bias)
        return hidden
