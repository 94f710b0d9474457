"""Hugging Face Llama-family <-> Megatron ``GPTModel``: the config translation and the tensor mapping.

Pure functions over plain dicts and tensors (no files, no process groups); :mod:`nemo_rpo.models.hf_io`
reads and writes the checkpoints and shards the tensors over TP/PP.

Supported: ``LlamaForCausalLM``, ``MistralForCausalLM`` (no sliding window shorter than the sequence)
and ``Qwen2ForCausalLM`` (q/k/v biases) — RMSNorm, SwiGLU, RoPE without scaling, GQA, tied or untied
embeddings. Megatron names are those of a TP=1, PP=1 model (``decoder.layers.<i>....``); with the
Transformer Engine spec the two per-layer norms live inside the fused linears:

==========================================  =====================================================
Hugging Face                                Megatron (local spec; TE spec where different)
==========================================  =====================================================
model.embed_tokens.weight                   embedding.word_embeddings.weight
model.norm.weight                           decoder.final_layernorm.weight
lm_head.weight (untied only)                output_layer.weight
layers.i.input_layernorm.weight             decoder.layers.i.input_layernorm.weight
                                            (TE: self_attention.linear_qkv.layer_norm_weight)
layers.i.self_attn.{q,k,v}_proj.{weight,bias}  self_attention.linear_qkv.{weight,bias}, interleaved
                                            per query group: that group's q heads, then k, then v
layers.i.self_attn.o_proj.weight            self_attention.linear_proj.weight
layers.i.post_attention_layernorm.weight    pre_mlp_layernorm.weight (TE: mlp.linear_fc1.layer_norm_weight)
layers.i.mlp.{gate,up}_proj.weight          mlp.linear_fc1.weight = cat([gate, up], 0)
layers.i.mlp.down_proj.weight               mlp.linear_fc2.weight
==========================================  =====================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from nemo_rpo.config.schema import ConfigError, ModelConfig

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "hf_config_from_model",
    "hf_to_megatron",
    "megatron_to_hf",
    "model_fields_from_hf",
]

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}
_MODEL_TYPES = {v: k for k, v in SUPPORTED_ARCHITECTURES.items()}


def _architecture(hf: Mapping[str, Any], where: str) -> str:
    archs = hf.get("architectures") or []
    model_type = hf.get("model_type")
    for arch in archs:
        if arch in SUPPORTED_ARCHITECTURES:
            return SUPPORTED_ARCHITECTURES[arch]
    if not archs and model_type in _MODEL_TYPES:
        return model_type
    raise ConfigError(f"{where}: architecture {archs or model_type} is not supported; "
                      f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")  # fmt: skip


def _rope_theta(hf: Mapping[str, Any]) -> float:
    # transformers >= 5 nests RoPE settings under rope_parameters; 4.x has rope_theta at the top.
    params = hf.get("rope_parameters") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    return float(theta)


def _check_rope_scaling(hf: Mapping[str, Any], where: str) -> None:
    scaling = hf.get("rope_scaling") or {}
    params = hf.get("rope_parameters") or {}
    kind = scaling.get("rope_type", scaling.get("type")) or params.get("rope_type") or "default"
    if kind != "default":
        raise ConfigError(f"{where}: rope scaling {kind!r} is not supported (plain RoPE only)")


def model_fields_from_hf(hf: Mapping[str, Any], *, where: str = "config.json") -> dict[str, Any]:
    """``ModelConfig`` fields that reproduce the HF model described by ``hf`` (its ``config.json``).

    ``make_vocab_size_divisible_by`` becomes 1: padding rows would enter the softmax and change the
    log-probs, so the vocabulary stays the HF one (it must then be divisible by ``parallel.tp``).
    ``max_seq_len`` and ``precision`` are run settings and are not returned.

    Raises:
        ConfigError: an unsupported architecture or feature, naming ``where`` and the field.
    """
    arch = _architecture(hf, where)
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"{where}: hidden_act {act!r} is not supported (SwiGLU with silu only)")
    if arch in ("llama", "mistral") and (hf.get("attention_bias") or hf.get("mlp_bias")):
        raise ConfigError(f"{where}: attention_bias/mlp_bias are not supported for {arch}")
    _check_rope_scaling(hf, where)
    heads = int(hf["num_attention_heads"])
    hidden = int(hf["hidden_size"])
    head_dim = hf.get("head_dim") or hidden // heads
    theta = _rope_theta(hf)
    if theta != int(theta):
        raise ConfigError(f"{where}: rope_theta {theta} is not an integer")
    return {
        "num_layers": int(hf["num_hidden_layers"]),
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_query_groups": int(hf.get("num_key_value_heads") or heads),
        "ffn_hidden_size": int(hf["intermediate_size"]),
        "kv_channels": int(head_dim),
        "vocab_size": int(hf["vocab_size"]),
        "make_vocab_size_divisible_by": 1,
        "normalization": "RMSNorm",
        "layernorm_epsilon": float(hf.get("rms_norm_eps", 1e-6)),
        "activation": "swiglu",
        "position_embedding_type": "rope",
        "rotary_base": int(theta),
        "rotary_percent": 1.0,
        "untie_embeddings_and_output_weights": not bool(hf.get("tie_word_embeddings", False)),
        "add_bias_linear": False,
        "add_qkv_bias": arch == "qwen2",
    }


def check_sequence_fits(hf: Mapping[str, Any], max_seq_len: int, *, where: str = "config.json") -> None:
    """Positions the HF model was never trained for (or a sliding window it would apply) are errors."""
    limit = hf.get("max_position_embeddings")
    if limit is not None and max_seq_len > int(limit):
        raise ConfigError(f"model.max_seq_len: {max_seq_len} exceeds {where} max_position_embeddings {limit}")
    window = hf.get("sliding_window")
    if window is not None and (hf.get("use_sliding_window", True)) and max_seq_len > int(window):
        raise ConfigError(f"model.max_seq_len: {max_seq_len} exceeds {where} sliding_window {window} "
                          "(sliding-window attention is not implemented)")  # fmt: skip


def _norm_names(te: bool) -> tuple[str, str]:
    if te:
        return "self_attention.linear_qkv.layer_norm_weight", "mlp.linear_fc1.layer_norm_weight"
    return "input_layernorm.weight", "pre_mlp_layernorm.weight"


def _interleave_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: int) -> torch.Tensor:
    # [nq*d, ...], [ng*d, ...], [ng*d, ...] -> [ng * (nq/ng + 2) * d, ...], group by group.
    rest = q.shape[1:]
    parts = [t.reshape(groups, -1, *rest) for t in (q, k, v)]
    return torch.cat(parts, dim=1).reshape(-1, *rest)


def _split_qkv(qkv: torch.Tensor, cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    groups = cfg.num_query_groups or cfg.num_attention_heads
    d = cfg.kv_channels or cfg.hidden_size // cfg.num_attention_heads
    per_group_q = cfg.num_attention_heads // groups * d
    rest = qkv.shape[1:]
    grouped = qkv.reshape(groups, per_group_q + 2 * d, *rest)
    q, k, v = torch.split(grouped, [per_group_q, d, d], dim=1)
    return q.reshape(-1, *rest), k.reshape(-1, *rest), v.reshape(-1, *rest)


def hf_to_megatron(hf_state: Mapping[str, torch.Tensor], cfg: ModelConfig, *, te: bool = False) -> dict:
    """HF tensors -> Megatron TP=1/PP=1 tensors (same dtypes; the vocabulary is not padded here).

    Every HF tensor must be used and every Megatron tensor found; a tied model may carry a redundant
    ``lm_head.weight`` equal to the embedding.

    Raises:
        KeyError: a tensor the architecture needs is missing, or one is left over (named).
    """
    src = dict(hf_state)
    prefix = "model." if any(k.startswith("model.") for k in src) else ""

    def take(name: str) -> torch.Tensor:
        key = prefix + name if not name.startswith("lm_head") else name
        if key not in src:
            raise KeyError(f"Hugging Face checkpoint has no tensor {key!r}")
        return src.pop(key)

    groups = cfg.num_query_groups or cfg.num_attention_heads
    ln_attn, ln_mlp = _norm_names(te)
    out = {
        "embedding.word_embeddings.weight": take("embed_tokens.weight"),
        "decoder.final_layernorm.weight": take("norm.weight"),
    }
    if cfg.untie_embeddings_and_output_weights:
        out["output_layer.weight"] = take("lm_head.weight")
    elif "lm_head.weight" in src:
        if not torch.equal(src["lm_head.weight"], out["embedding.word_embeddings.weight"]):
            raise KeyError("lm_head.weight differs from embed_tokens.weight but tie_word_embeddings is true")
        src.pop("lm_head.weight")
    for i in range(cfg.num_layers):
        hf = f"layers.{i}."
        mg = f"decoder.layers.{i}."
        out[mg + ln_attn] = take(hf + "input_layernorm.weight")
        out[mg + ln_mlp] = take(hf + "post_attention_layernorm.weight")
        q, k, v = (take(f"{hf}self_attn.{p}_proj.weight") for p in "qkv")
        out[mg + "self_attention.linear_qkv.weight"] = _interleave_qkv(q, k, v, groups)
        if cfg.add_qkv_bias:
            qb, kb, vb = (take(f"{hf}self_attn.{p}_proj.bias") for p in "qkv")
            out[mg + "self_attention.linear_qkv.bias"] = _interleave_qkv(qb, kb, vb, groups)
        out[mg + "self_attention.linear_proj.weight"] = take(hf + "self_attn.o_proj.weight")
        gate, up = take(hf + "mlp.gate_proj.weight"), take(hf + "mlp.up_proj.weight")
        out[mg + "mlp.linear_fc1.weight"] = torch.cat([gate, up], dim=0)
        out[mg + "mlp.linear_fc2.weight"] = take(hf + "mlp.down_proj.weight")
    leftover = sorted(k for k in src if not k.endswith("rotary_emb.inv_freq"))
    if leftover:
        raise KeyError(f"Hugging Face tensors not used by the {cfg.num_layers}-layer mapping: {leftover[:5]}")
    return out


def megatron_to_hf(state: Mapping[str, torch.Tensor], cfg: ModelConfig, *, te: bool = False) -> dict:
    """Megatron TP=1/PP=1 tensors -> HF tensor names (the inverse of :func:`hf_to_megatron`).

    ``state`` may hold the padded embedding; rows past ``cfg.vocab_size`` are dropped. Tied models get
    no ``lm_head.weight`` (transformers ties it on load).
    """
    src = {k: v for k, v in state.items() if not k.endswith("_extra_state")}

    def take(name: str) -> torch.Tensor:
        if name not in src:
            raise KeyError(f"Megatron checkpoint has no tensor {name!r}")
        return src.pop(name)

    vocab = cfg.vocab_size
    ln_attn, ln_mlp = _norm_names(te)
    embed = take("embedding.word_embeddings.weight")
    out = {
        "model.embed_tokens.weight": embed[:vocab] if vocab else embed,
        "model.norm.weight": take("decoder.final_layernorm.weight"),
    }
    if cfg.untie_embeddings_and_output_weights:
        head = take("output_layer.weight")
        out["lm_head.weight"] = head[:vocab] if vocab else head
    else:
        src.pop("output_layer.weight", None)  # a tied copy, when a state dict carries one
    for i in range(cfg.num_layers):
        hf = f"model.layers.{i}."
        mg = f"decoder.layers.{i}."
        out[hf + "input_layernorm.weight"] = take(mg + ln_attn)
        out[hf + "post_attention_layernorm.weight"] = take(mg + ln_mlp)
        q, k, v = _split_qkv(take(mg + "self_attention.linear_qkv.weight"), cfg)
        out.update({f"{hf}self_attn.{p}_proj.weight": t for p, t in zip("qkv", (q, k, v))})
        if cfg.add_qkv_bias:
            qb, kb, vb = _split_qkv(take(mg + "self_attention.linear_qkv.bias"), cfg)
            out.update({f"{hf}self_attn.{p}_proj.bias": t for p, t in zip("qkv", (qb, kb, vb))})
        out[hf + "self_attn.o_proj.weight"] = take(mg + "self_attention.linear_proj.weight")
        gate, up = torch.chunk(take(mg + "mlp.linear_fc1.weight"), 2, dim=0)
        out[hf + "mlp.gate_proj.weight"], out[hf + "mlp.up_proj.weight"] = gate, up
        out[hf + "mlp.down_proj.weight"] = take(mg + "mlp.linear_fc2.weight")
    if src:
        raise KeyError(f"Megatron tensors with no Hugging Face name: {sorted(src)[:5]}")
    return {k: v.contiguous() for k, v in out.items()}


def hf_config_from_model(cfg: ModelConfig, base: Mapping[str, Any] | None, dtype: str) -> dict[str, Any]:
    """``config.json`` for an exported model: ``base`` (the imported model's) with the shape from ``cfg``.

    Without ``base`` a ``LlamaForCausalLM`` (or ``Qwen2ForCausalLM`` when ``cfg.add_qkv_bias``) config
    is written from ``cfg`` alone.
    """
    out: dict[str, Any] = dict(base or {})
    if not out:
        arch = "Qwen2ForCausalLM" if cfg.add_qkv_bias else "LlamaForCausalLM"
        out = {"architectures": [arch], "model_type": SUPPORTED_ARCHITECTURES[arch], "hidden_act": "silu",
               "max_position_embeddings": cfg.max_seq_len}  # fmt: skip
    if not out.get("architectures"):
        out["architectures"] = [_MODEL_TYPES[_architecture(out, "base config")]]
    heads = cfg.num_attention_heads
    out.update(
        num_hidden_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        num_attention_heads=heads,
        num_key_value_heads=cfg.num_query_groups or heads,
        intermediate_size=cfg.ffn_hidden_size or 4 * cfg.hidden_size,
        head_dim=cfg.kv_channels or cfg.hidden_size // heads,
        vocab_size=cfg.vocab_size,
        rms_norm_eps=cfg.layernorm_epsilon,
        tie_word_embeddings=not cfg.untie_embeddings_and_output_weights,
    )
    out["torch_dtype" if "torch_dtype" in out else "dtype"] = dtype  # transformers 4.x / 5.x spelling
    if "rope_parameters" in out and isinstance(out["rope_parameters"], dict):
        out["rope_parameters"] = {**out["rope_parameters"], "rope_theta": float(cfg.rotary_base)}
    else:
        out["rope_theta"] = float(cfg.rotary_base)
    return out
