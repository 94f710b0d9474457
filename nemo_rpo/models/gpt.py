"""Builds the Megatron ``GPTModel`` (policy, reference and reward-model trunk) from a ``ModelConfig``.

The layer implementation is chosen by ``ModuleSpec`` (megatron's ``gpt_layer_specs``), never by flags
inside the model: the local spec (pure torch, runs on CPU) or the Transformer Engine spec (fused
kernels, FP8). Parallelism is applied beside the model: the spec is the same for every TP/PP layout,
and pre/post-processing stages come from ``parallel_state``.
"""

from __future__ import annotations

import importlib.util
import logging
import math

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_config import TransformerConfig

from nemo_rpo import patches
from nemo_rpo.config.schema import ConfigError, ModelConfig, ParallelConfig
from nemo_rpo.distributed import cpu_support
from nemo_rpo.distributed.cpu_support import glibc_malloc_defaults
from nemo_rpo.models.attention import SDPAttention
from nemo_rpo.models.init import layout_invariant_init_
from nemo_rpo.models.logps import chunked_lm_head_nll, vocab_parallel_nll
from nemo_rpo.models.lora import freeze_base_, init_adapters_, lora_spec
from nemo_rpo.models.shared_prompt import is_layout, to_sequences

__all__ = [
    "PolicyGPTModel",
    "build_gpt_model",
    "build_transformer_config",
    "effective_precision",
    "layer_spec",
    "padded_vocab_size",
    "shares_prompt",
    "uses_transformer_engine",
]

logger = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class PolicyGPTModel(GPTModel):
    """megatron's ``GPTModel`` whose per-token loss (``forward(..., labels=...)``) goes through
    :func:`~nemo_rpo.models.logps.vocab_parallel_nll`: the same numbers, fewer passes over the logits
    at TP=1. Fused cross-entropy settings (TE / native) keep megatron's implementation.

    With ``logps_chunk_size > 0`` (``model.logps_chunk_size``, set by :func:`build_gpt_model`) the
    labelled forward runs the output layer and the NLL together, a block of tokens at a time
    (:func:`~nemo_rpo.models.logps.chunked_lm_head_nll`): the full-vocabulary logits are never
    materialised. Calls without labels (log-probs from logits, generation) return logits as before.
    """

    logps_chunk_size: int = 0
    real_vocab_size: int | None = None
    lora_rank: int = 0  # model.lora.rank: > 0 when the linear layers carry adapters (nemo_rpo.models.lora)

    def _preprocess(self, input_ids, position_ids, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        """Megatron's, plus per-row rotary positions for a shared-prompt layout (see ``forward``)."""
        out = super()._preprocess(input_ids, position_ids, *args, **kwargs)
        rotary = out[1]
        if not getattr(self, "_per_row_positions", False) or rotary is None:
            return out
        # megatron's [s, 1, 1, d] table indexed by each packed token's position -> [s, b, 1, d]
        # (a packed row is at least as wide as each of its sequences, so every position is in the table)
        return (out[0], rotary[:, 0, 0][position_ids.t()].unsqueeze(2), *out[2:])

    def forward(self, input_ids, position_ids, attention_mask, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
        """megatron's ``forward``. With a shared-prompt layout as ``attention_mask``
        (:mod:`nemo_rpo.models.shared_prompt`), rotary embeddings follow ``position_ids`` row by row:
        megatron's assume ``0 .. s-1`` on every row, a packed row restarts its responses at the prompt's
        end.

        Without autograd (sampling, reference and reward scoring) the forward runs with glibc's own
        allocation policy, not ``trainer.keep_freed_memory``'s, whose retained heap would grow without
        bound under shapes that change every call (:func:`~nemo_rpo.distributed.cpu_support.glibc_malloc_defaults`).
        """
        if not torch.is_grad_enabled():
            with glibc_malloc_defaults():
                return self._forward(input_ids, position_ids, attention_mask, *args, **kwargs)
        return self._forward(input_ids, position_ids, attention_mask, *args, **kwargs)

    def _forward(self, input_ids, position_ids, attention_mask, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if not is_layout(attention_mask) or self.position_embedding_type != "rope":
            return super().forward(input_ids, position_ids, attention_mask, *args, **kwargs)
        if position_ids is None:
            raise ValueError("model.share_prompt: the packed layout needs position_ids")
        self._per_row_positions = True
        try:
            return super().forward(input_ids, position_ids, attention_mask, *args, **kwargs)
        finally:
            self._per_row_positions = False

    def _postprocess(self, hidden_states, input_ids, position_ids, labels, **kwargs):  # noqa: ANN001, ANN201
        """With ``labels`` and a ``loss_mask`` ``[b, s]``, run the output layer only on the columns the mask
        can select (the first to the last column any row counts): prompt positions cost no LM-head GEMM
        and no softmax. Columns outside that span get NLL 0 (the mask zeroes them anyway); the counted
        values are the full-sequence ones, unchanged. Anything else (no mask, MTP, sequence
        parallelism, inference) goes through megatron unchanged.

        With a shared-prompt layout the hidden states are packed ``[W, B, h]``: the span's columns of every
        sequence are gathered from them first, so the result is the unpacked ``[B*R, T]`` NLL.
        """
        loss_mask = kwargs.get("loss_mask")
        layout = kwargs.get("attention_mask")
        if is_layout(layout) and self.post_process:
            return self._postprocess_shared_prompt(hidden_states, input_ids, position_ids, labels, **kwargs)
        span = None
        if (
            labels is not None
            and loss_mask is not None
            and self.post_process
            and self.config.mtp_num_layers is None
            and not self.output_layer.sequence_parallel
            and kwargs.get("inference_context") is None
            and kwargs.get("packed_seq_params") is None
        ):
            span = _counted_span(loss_mask)
        if span is None or span == (0, labels.shape[1]):
            return self._output_nll(hidden_states, input_ids, position_ids, labels, **kwargs)
        start, end = span
        kwargs["loss_mask"] = None
        nll = self._output_nll(
            hidden_states[start:end], input_ids, position_ids, labels[:, start:end], **kwargs
        )
        return F.pad(nll, (start, labels.shape[1] - end))

    def _postprocess_shared_prompt(self, hidden_states, input_ids, position_ids, labels, **kwargs):  # noqa: ANN001, ANN201
        loss_mask = kwargs.get("loss_mask")
        if labels is None or loss_mask is None:
            raise ValueError("model.share_prompt: a packed batch needs labels and loss_mask (per-token NLL)")
        if self.config.mtp_num_layers is not None or self.output_layer.sequence_parallel:
            raise ValueError("model.share_prompt: not supported with multi-token prediction or sequence "
                             "parallelism")  # fmt: skip
        layout = kwargs["attention_mask"]
        span = _counted_span(loss_mask) or (0, 1)
        start, end = span
        # [W, B, h] -> [span, B*R, h] (sequence-first, as megatron's output layer takes it)
        hidden = to_sequences(hidden_states, layout[:, start:end].t())
        kwargs["loss_mask"] = None
        nll = self._output_nll(hidden, input_ids, position_ids, labels[:, start:end], **kwargs)
        return F.pad(nll, (start, labels.shape[1] - end))

    def _output_nll(self, hidden_states, input_ids, position_ids, labels, **kwargs):  # noqa: ANN001, ANN201
        """megatron's ``_postprocess``, or the chunked output layer + NLL where it applies (labels given,
        last stage, no MTP / sequence parallelism / inference / output bias / fused weight-gradient
        accumulation: those keep megatron's path)."""
        layer = getattr(self, "output_layer", None)  # absent on pipeline stages before the last
        if (
            self.logps_chunk_size <= 0
            or labels is None
            or not self.post_process
            or self.config.mtp_num_layers is not None
            or kwargs.get("mtp_in_postprocess")
            or layer.sequence_parallel
            or layer.bias is not None
            or getattr(layer, "gradient_accumulation_fusion", False)
            or kwargs.get("inference_context") is not None
            or kwargs.get("runtime_gather_output")
        ):
            return super()._postprocess(hidden_states, input_ids, position_ids, labels, **kwargs)
        weight = (
            self.shared_embedding_or_output_weight() if self.share_embeddings_and_output_weights else None
        )
        return chunked_lm_head_nll(
            hidden_states,
            layer.weight if weight is None else weight,
            labels,
            chunk_size=self.logps_chunk_size,
            real_vocab_size=self.real_vocab_size,
        )

    def mask_padded_vocab(self, vocab_size: int) -> None:
        """Keep the vocabulary padding out of the softmax: logits of ids ``>= vocab_size`` become ``-inf``.

        The embedding has :func:`padded_vocab_size` rows for an even TP split. Megatron leaves the padding
        rows in the softmax, so the trained distribution would put mass (about 1% per token after a short
        SFT of the byte-level model, 259 ids padded to 384) on ids that the tokenizer never produces, the
        sampler never draws (it renormalises over the real ids) and ``mcore-to-hf`` never exports: the
        policy trained would not be the one sampled and exported. Found by the learning reference
        (``benchmarks/learning_reference``), which with the padding masked reproduces nemo-rpo's DPO runs
        to float rounding. Applied to the output layer's logits, so every consumer (loss, log-probs,
        generation) sees it; the padding rows then get no gradient.
        """
        if self.post_process and vocab_size < self.vocab_size:
            self.real_vocab_size = vocab_size
            self.output_layer.register_forward_hook(self._mask_padding_logits)

    def _mask_padding_logits(self, module: torch.nn.Module, inputs, output):  # noqa: ANN001, ANN202
        logits, bias = output
        width = logits.shape[-1]  # the whole padded vocabulary when gathered, else this TP rank's slice
        start = 0 if width == self.vocab_size else parallel_state.get_tensor_model_parallel_rank() * width
        if start + width <= self.real_vocab_size:
            return output
        ids = torch.arange(start, start + width, device=logits.device)
        return logits.masked_fill(ids >= self.real_vocab_size, float("-inf")), bias

    def compute_language_model_loss(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.config.cross_entropy_loss_fusion:
            return super().compute_language_model_loss(labels, logits)
        # logits [s, b, V/tp], labels [b, s] -> per-token NLL [b, s]
        return vocab_parallel_nll(logits, labels.t()).t().contiguous()


def _counted_span(loss_mask: torch.Tensor) -> tuple[int, int] | None:
    """``(first, last + 1)`` of the columns where any row of ``loss_mask`` ``[b, s]`` is non-zero."""
    cols = torch.nonzero(loss_mask.ne(0).any(dim=0)).flatten()
    if cols.numel() == 0:
        return None
    return int(cols[0]), int(cols[-1]) + 1


def padded_vocab_size(vocab_size: int, model: ModelConfig, parallel: ParallelConfig) -> int:
    """Round the vocabulary up so every TP rank holds an equal slice of the embedding.

    Megatron-LM pads to a multiple of ``make_vocab_size_divisible_by * tp``, which makes the model depend
    on the layout (the padded rows enter the softmax normaliser). We pad to a multiple of
    ``lcm(make_vocab_size_divisible_by, tp)``: the same size at every TP that divides the multiple (any
    power of two up to it, for the default 128), so changing TP never changes the model.
    """
    multiple = math.lcm(model.make_vocab_size_divisible_by, parallel.tp)
    return -(-vocab_size // multiple) * multiple


def uses_transformer_engine(model: ModelConfig) -> bool:
    """Resolve ``transformer_impl``: ``auto`` picks TE only on a GPU machine where it is importable.

    ``transformer_engine`` is never imported unless asked for (or ``auto`` on a GPU): a partial TE
    install breaks ``import megatron.core`` on CPU machines.
    """
    if model.transformer_impl == "local":
        return False
    if model.transformer_impl == "transformer_engine":
        return True
    if not torch.cuda.is_available() or importlib.util.find_spec("transformer_engine") is None:
        return False
    try:
        import transformer_engine  # noqa: F401
    except Exception as err:  # a broken TE build raises RuntimeError/OSError, not ImportError
        logger.warning("transformer_impl=auto: transformer_engine is installed but fails to import (%s); "
                       "using the local spec", err)  # fmt: skip
        return False
    return True


def shares_prompt(model: ModelConfig) -> bool:
    """Resolve ``model.share_prompt``: ``None`` means wherever the layer spec supports the packed layout
    (the local spec with SDPA core attention, :mod:`nemo_rpo.models.shared_prompt`)."""
    supported = model.core_attention == "sdpa" and not uses_transformer_engine(model)
    if model.share_prompt and not supported:
        raise ConfigError("model.share_prompt: needs the local spec with core_attention=sdpa, but Transformer "
                          "Engine is in use here; set model.share_prompt=null or false")  # fmt: skip
    return supported if model.share_prompt is None else model.share_prompt


def layer_spec(model: ModelConfig) -> ModuleSpec:
    """The transformer-layer ``ModuleSpec``: Transformer Engine's or megatron's local (pure torch) one.

    With ``model.fast_paths`` it installs the ``fast_paths`` patches (:mod:`nemo_rpo.patches`): megatron's
    attention calls :func:`~nemo_rpo.models.rope.apply_rotary_pos_emb` and its MLP
    :func:`~nemo_rpo.models.mlp.forward` (same numbers, fewer copies), taken by every model whose
    ``TransformerConfig`` has them on (:func:`build_transformer_config`); the others run megatron's code.
    """
    if model.fast_paths:
        patches.install("fast_paths")
    if uses_transformer_engine(model):
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        if model.lora.rank > 0:
            raise ConfigError("model.lora.rank: LoRA adapters need the local spec, but Transformer Engine is in "
                              "use here; set model.transformer_impl=local")  # fmt: skip

        # TE reads RMSNorm/LayerNorm from the TransformerConfig, so the spec needs no normalization arg.
        return get_gpt_layer_with_transformer_engine_spec()
    if model.fp8 is not None:
        raise ConfigError(
            "model.fp8: FP8 needs the Transformer Engine spec, but transformer_engine is not usable here"
        )
    spec = get_gpt_layer_local_spec(normalization=model.normalization)
    if model.core_attention == "sdpa":
        spec.submodules.self_attention.submodules.core_attention = SDPAttention
    return lora_spec(spec, model.lora, swiglu=model.activation == "swiglu")


def effective_precision(model: ModelConfig) -> str:
    """``model.precision``, except bf16 on a CPU without bf16 matmuls (no AVX-512-BF16 / AMX), which says so
    in one line and trains in fp32 (there torch converts bf16 products to fp32 inside each kernel: half the
    precision for no speed). On a GPU, or a CPU that has them, bf16 (fp32 master weights)."""
    if model.precision != "bf16" or torch.cuda.is_available() or cpu_support.cpu_has_bf16_matmul():
        return model.precision
    logger.warning(
        "model.precision=bf16: this CPU lacks bf16 matmul support (AVX-512-BF16/AMX); training in fp32"
    )
    return "fp32"


def build_transformer_config(model: ModelConfig, parallel: ParallelConfig) -> TransformerConfig:
    """Translate our ``ModelConfig`` + ``ParallelConfig`` into megatron's ``TransformerConfig``.

    Fused kernels that need apex/TE stay off (``gradient_accumulation_fusion``, bias/softmax fusions);
    ``cuda_graph_scope=[]`` avoids a deprecation path. Megatron's own initialisation depends on the
    layout; :func:`build_gpt_model` can redo it layout-independently (``init_seed``). ``model.fast_paths``
    is recorded on the config (:func:`nemo_rpo.patches.set_fast_paths`) for the patched SwiGLU and RoPE.
    """
    precision = effective_precision(model)
    dtype = _DTYPES[precision]
    swiglu = model.activation == "swiglu"
    recompute = {}
    if model.recompute_granularity == "full":
        # Checkpoint every layer's input; the cheapest setting that is valid for any num_layers/pp.
        recompute = {
            "recompute_granularity": "full",
            "recompute_method": "uniform",
            "recompute_num_layers": 1,
        }
    elif model.recompute_granularity == "selective":
        recompute = {"recompute_granularity": "selective"}
    fp8 = {}
    if model.fp8 is not None:
        fp8 = {"fp8": model.fp8, "fp8_recipe": model.fp8_recipe}
    config = TransformerConfig(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        ffn_hidden_size=model.ffn_hidden_size or 4 * model.hidden_size,
        kv_channels=model.kv_channels,
        normalization=model.normalization,
        layernorm_epsilon=model.layernorm_epsilon,
        gated_linear_unit=swiglu,
        activation_func=F.silu if swiglu else F.gelu,
        add_bias_linear=model.add_bias_linear,
        add_qkv_bias=model.add_qkv_bias,
        hidden_dropout=model.hidden_dropout,
        attention_dropout=model.attention_dropout,
        init_method_std=model.init_method_std,
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu_initialization=not torch.cuda.is_available(),
        gradient_accumulation_fusion=False,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=False,
        cuda_graph_scope=[],
        **recompute,
        **fp8,
    )
    patches.set_fast_paths(config, model.fast_paths)
    return config


def build_gpt_model(
    model: ModelConfig, parallel: ParallelConfig, vocab_size: int, *, init_seed: int | None = None
) -> GPTModel:
    """Build this rank's stage of the GPT model (call after ``init_distributed``).

    Args:
        model: the model shape.
        parallel: TP/PP sizes (must match the initialised megatron groups).
        vocab_size: the tokenizer's vocabulary; padded with :func:`padded_vocab_size`.
        init_seed: re-draw every weight matrix with :func:`~nemo_rpo.models.init.layout_invariant_init_`
            so that the model is the same at every TP/PP layout; ``None`` keeps megatron's per-rank init.
            With ``model.lora.rank > 0`` the base weights are frozen and the adapters drawn from this seed
            (``B = 0``: :mod:`nemo_rpo.models.lora`).

    Returns:
        A ``PolicyGPTModel`` whose ``forward`` returns vocab-parallel logits ``[b, s, V_padded / tp]`` on the
        last pipeline stage (``-inf`` in the padding columns: :meth:`PolicyGPTModel.mask_padded_vocab`) and
        hidden states ``[s, b, h]`` on the others.
    """
    if parallel_state.get_tensor_model_parallel_world_size() != parallel.tp or (
        parallel_state.get_pipeline_model_parallel_world_size() != parallel.pp
    ):
        raise ConfigError(
            "parallel: the model-parallel groups do not match parallel.tp/pp; call init_distributed first"
        )
    config = build_transformer_config(model, parallel)
    gpt = PolicyGPTModel(
        config=config,
        transformer_layer_spec=layer_spec(model),
        vocab_size=padded_vocab_size(vocab_size, model, parallel),
        max_sequence_length=model.max_seq_len,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        parallel_output=True,
        share_embeddings_and_output_weights=not model.untie_embeddings_and_output_weights,
        position_embedding_type=model.position_embedding_type,
        rotary_percent=model.rotary_percent,
        rotary_base=model.rotary_base,
    )
    gpt.mask_padded_vocab(vocab_size)
    gpt.logps_chunk_size = model.logps_chunk_size
    if config.params_dtype != torch.float32:
        # Megatron builds its layers in params_dtype but the local spec's torch norms in fp32; megatron's
        # 16-bit optimizer maps only 16-bit params in its checkpoint (a bf16 save failed: "Param id 9 does
        # not match any model sharded param"). Megatron-LM casts the whole model (Float16Module); so do we.
        for param in gpt.parameters():
            if param.is_floating_point() and param.dtype != config.params_dtype:
                param.data = param.data.to(config.params_dtype)
    if torch.cuda.is_available():
        # Megatron builds its linear layers on the GPU, but torch norms (local spec) on the CPU; move
        # the whole stage, as Megatron-LM's get_model does.
        gpt.cuda(torch.cuda.current_device())
    if init_seed is not None:
        layout_invariant_init_(gpt, config, init_seed)
    if model.lora.rank > 0:
        gpt.lora_rank = model.lora.rank
        init_adapters_(gpt, init_seed or 0)
        freeze_base_(gpt)
    return gpt
