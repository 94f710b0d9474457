"""Hugging Face checkpoint files in and out, and HF weights into a sharded Megatron model.

Reads a local HF directory — ``config.json`` with ``*.safetensors`` (one file or an index),
``pytorch_model*.bin``, or a single ``*.gguf`` (dequantized through ``transformers``, which needs the
``gguf`` package) — and writes one: ``model.safetensors``, ``config.json`` and the tokenizer files.

:func:`load_hf_weights_` fills this rank's stage of a ``GPTModel`` at any TP/PP layout: the global
tensor of every parameter comes from :func:`~nemo_rpo.models.hf_mapping.hf_to_megatron`, and the rank
copies out its slice using megatron's own checkpoint metadata (key, global shape, offset), the same
metadata that lets a TP=2 checkpoint load at TP=1 — so no per-layout slicing rules live here.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from nemo_rpo.config.schema import ConfigError, ModelConfig
from nemo_rpo.models.hf_mapping import hf_config_from_model, hf_to_megatron, megatron_to_hf
from nemo_rpo.models.init import sharded_tensors
from nemo_rpo.models.lora import LoraLinear, is_adapter_key

__all__ = [
    "TOKENIZER_FILES",
    "export_hf_model",
    "export_peft_adapter",
    "gguf_file",
    "load_hf_weights_",
    "merged_state",
    "read_hf_config",
    "read_hf_state",
    "write_hf_checkpoint",
]

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
    "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json", "generation_config.json",
)  # fmt: skip
_VOCAB_TENSORS = ("embedding.word_embeddings.weight", "output_layer.weight")


def _hf_dir(path: str | os.PathLike, field: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"{field}: {path} is not a directory")
    return p


def gguf_file(path: str | os.PathLike) -> str | None:
    """The one ``*.gguf`` in ``path`` when the directory has no ``config.json``; else None."""
    p = Path(path)
    if (p / "config.json").is_file():
        return None
    found = sorted(f.name for f in p.glob("*.gguf"))
    if len(found) > 1:
        raise ConfigError(f"{path}: several .gguf files ({', '.join(found)}); keep one per directory")
    return found[0] if found else None


def read_hf_config(path: str | os.PathLike, field: str = "model.init_from_hf") -> dict[str, Any]:
    """The model's ``config.json`` as a dict (read through ``transformers`` for a GGUF directory)."""
    p = _hf_dir(path, field)
    gguf = gguf_file(p)
    if gguf is not None:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(p), gguf_file=gguf).to_dict()
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise ConfigError(f"{field}: {path} has neither config.json nor a .gguf file")
    try:
        return json.loads(cfg_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{cfg_file}:{err.lineno}: invalid JSON: {err.msg}") from err


def read_hf_state(path: str | os.PathLike, field: str = "model.init_from_hf") -> dict[str, torch.Tensor]:
    """Every tensor of the HF checkpoint in ``path``, by HF name, in its stored dtype (fp32 for GGUF)."""
    p = _hf_dir(path, field)
    gguf = gguf_file(p)
    if gguf is not None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(p), gguf_file=gguf, dtype=torch.float32)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    index = p / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else []
    if not files:
        files = [f.name for f in sorted(p.glob("*.safetensors"))]
    if files:
        from safetensors.torch import load_file

        state: dict[str, torch.Tensor] = {}
        for name in files:
            state.update(load_file(str(p / name)))
        return state
    bins = sorted(p.glob("pytorch_model*.bin"))
    if bins:
        state = {}
        for f in bins:
            state.update(torch.load(f, map_location="cpu", weights_only=True))
        return state
    raise ConfigError(f"{field}: {path} has no *.safetensors, pytorch_model*.bin or .gguf weights")


@torch.no_grad()
def load_hf_weights_(module: torch.nn.Module, hf_state: Mapping[str, torch.Tensor], cfg: ModelConfig) -> int:
    """Copy the HF weights into this rank's stage ``module`` (an unwrapped ``GPTModel``); returns the count.

    Works for the local and the Transformer Engine spec alike: megatron's checkpoint keys use the TE
    names for both (the local layer maps its norms onto them), so the mapping is taken with ``te=True``.

    Raises:
        KeyError: a parameter of the stage has no HF source, or HF tensors are left over (named).
        ValueError: a shape disagrees (the HF model and ``cfg`` differ), naming the tensor.
    """
    full = hf_to_megatron(hf_state, cfg, te=True)
    count = 0
    for sh in sharded_tensors(module):
        if is_adapter_key(sh.key):  # LoRA adapters are not base weights: they keep their own start
            continue
        lead = sh.prepend_axis_num
        name = sh.key
        if lead:
            layer = sh.global_offset[0]
            name = sh.key.replace("decoder.layers.", f"decoder.layers.{layer}.", 1)
        if name not in full:
            raise KeyError(f"{name}: no Hugging Face tensor maps to this Megatron parameter")
        source = full[name]
        shape = tuple(sh.global_shape[lead:])
        padded_rows = name in _VOCAB_TENSORS and source.shape[0] < shape[0]
        if source.shape[1:] != shape[1:] or (source.shape[0] != shape[0] and not padded_rows):
            raise ValueError(
                f"{name}: Hugging Face shape {tuple(source.shape)} does not fit Megatron {shape}"
            )
        if padded_rows:  # the vocabulary padding (only with make_vocab_size_divisible_by > 1)
            source = torch.cat([source, source.new_zeros(shape[0] - source.shape[0], *shape[1:])])
        index = tuple(slice(o, o + n) for o, n in zip(sh.global_offset[lead:], sh.data.shape))
        sh.data.copy_(source[index].reshape(sh.data.shape).to(sh.data.dtype))
        count += 1
    return count


def write_hf_checkpoint(out: str | os.PathLike, state: Mapping[str, torch.Tensor], config: Mapping[str, Any],
                        tokenizer_source: str | os.PathLike | None) -> Path:  # fmt: skip
    """Write ``model.safetensors``, ``config.json`` and the tokenizer files into ``out`` (atomically).

    ``tokenizer_source`` is an HF directory whose tokenizer files are copied (a GGUF directory's
    tokenizer is re-saved through ``transformers``); None writes no tokenizer.
    """
    from safetensors.torch import save_file

    final = Path(out)
    tmp = final.with_name(f".tmp_{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"),
              metadata={"format": "pt"})  # fmt: skip
    (tmp / "config.json").write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
    if tokenizer_source is not None:
        src = Path(tokenizer_source)
        gguf = gguf_file(src)
        if gguf is not None:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(str(src), gguf_file=gguf).save_pretrained(str(tmp))
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def export_hf_model(out: str | os.PathLike, module: torch.nn.Module, cfg: ModelConfig, *, dtype: str,
                    base: Mapping[str, Any] | None = None,
                    tokenizer_source: str | os.PathLike | None = None) -> tuple[Path, int]:  # fmt: skip
    """Write a whole (TP=1, PP=1) GPT ``module`` as a Hugging Face directory; ``(path, tensors written)``.

    ``cfg.vocab_size`` is the tokenizer's vocabulary (padding rows are dropped); ``dtype`` a torch dtype
    name; ``base`` the imported model's ``config.json`` (see :func:`hf_config_from_model`).
    """
    state = merged_state(module)
    hf_state = {k: v.to(getattr(torch, dtype)) for k, v in megatron_to_hf(state, cfg).items()}
    path = write_hf_checkpoint(out, hf_state, hf_config_from_model(cfg, base, dtype), tokenizer_source)
    return path, len(hf_state)


@torch.no_grad()
def merged_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s tensors with its enabled LoRA adapters folded into their weights (``W + scale * B A``,
    computed in fp32) and the adapter matrices left out; ``module`` itself is not changed."""
    state = {k: v.detach() for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}
    for name, layer in module.named_modules():
        if isinstance(layer, LoraLinear) and layer.lora_enabled:
            state[f"{name}.weight"] = (layer.weight.float() + layer.delta_weight().float()).to(
                layer.weight.dtype
            )
    return {k: v for k, v in state.items() if not is_adapter_key(k)}


# megatron layer -> the Hugging Face (Llama) modules it holds, for PEFT's per-module adapters
_PEFT_MODULES = {"linear_qkv": ("self_attn", ("q_proj", "k_proj", "v_proj")),
                 "linear_proj": ("self_attn", ("o_proj",)),
                 "linear_fc1": ("mlp", ("gate_proj", "up_proj")),
                 "linear_fc2": ("mlp", ("down_proj",))}  # fmt: skip


@torch.no_grad()
def export_peft_adapter(out: str | os.PathLike, module: torch.nn.Module, cfg: ModelConfig, *, dtype: str,
                        base_model: str | None) -> tuple[Path, int]:  # fmt: skip
    """Write the LoRA adapters of a whole (TP=1, PP=1) GPT ``module`` as a PEFT adapter directory.

    ``adapter_config.json`` (``peft_type`` LORA, ``r``, ``lora_alpha``, ``target_modules`` in Hugging Face
    names) and ``adapter_model.safetensors`` with PEFT's keys,
    ``base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`` ``[r, in]`` / ``lora_B.weight``
    ``[out, r]``. A fused megatron layer becomes several HF modules sharing its ``A``: ``B``'s rows are
    split as the weight's are (q/k/v per query group, gate/up halves). Returns ``(path, tensors written)``.
    """
    from safetensors.torch import save_file

    from nemo_rpo.models.hf_mapping import _split_qkv

    lora, tensors, targets = cfg.lora, {}, []
    to = getattr(torch, dtype)
    for name, layer in module.named_modules():
        if not isinstance(layer, LoraLinear):
            continue
        # decoder.layers.<i>.self_attention.linear_qkv -> layer i, megatron name
        parts = name.split(".")
        index, kind = int(parts[2]), parts[-1]
        group, hf_names = _PEFT_MODULES[kind]
        a, b = layer.lora_a.detach(), layer.lora_b.detach()
        if kind == "linear_qkv":
            b_parts = _split_qkv(b, cfg)
        elif kind == "linear_fc1" and len(hf_names) == 2 and cfg.activation == "swiglu":
            b_parts = torch.chunk(b, 2, dim=0)
        else:
            b_parts = (b,)
        for hf_name, b_part in zip(hf_names, b_parts):
            key = f"base_model.model.model.layers.{index}.{group}.{hf_name}"
            tensors[f"{key}.lora_A.weight"] = a.to(to).clone()  # one A per HF module: no shared storage
            tensors[f"{key}.lora_B.weight"] = b_part.to(to).clone()
            if hf_name not in targets:
                targets.append(hf_name)
    if not tensors:
        raise ValueError("export_peft_adapter: the model has no LoRA adapters (model.lora.rank is 0)")
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
              "r": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout, "target_modules": targets,
              "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
              "init_lora_weights": True, "inference_mode": True, "modules_to_save": None, "layers_to_transform": None,
              "rank_pattern": {}, "alpha_pattern": {}}  # fmt: skip
    final = Path(out)
    tmp = final.with_name(f".tmp_{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final, len(tensors)
