"""ModelConfig -> TransformerConfig / ModuleSpec / GPTModel translation."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import ColumnParallelLinear

from nemo_rpo.config.schema import ConfigError, ModelConfig, ParallelConfig
from nemo_rpo.distributed.launch import ParallelInfo
from nemo_rpo.models.gpt import (
    build_gpt_model,
    build_transformer_config,
    layer_spec,
    padded_vocab_size,
    uses_transformer_engine,
)

TinyConfig = Callable[..., ModelConfig]
on_cpu = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-machine behaviour")


@pytest.mark.parametrize(
    ("vocab", "divisible_by", "tp", "expected"),
    [
        (256, 128, 1, 256),
        (257, 128, 1, 384),
        (300, 128, 1, 384),
        (300, 128, 2, 384),
        (50257, 128, 8, 50304),
        (7, 1, 1, 7),
        (7, 1, 2, 8),
        (100, 96, 64, 192),
    ],
)
def test_padded_vocab_size(
    tiny_config: TinyConfig, vocab: int, divisible_by: int, tp: int, expected: int
) -> None:
    model = tiny_config(make_vocab_size_divisible_by=divisible_by)
    # The same size at every TP that divides the multiple: TP never changes the model.
    assert padded_vocab_size(vocab, model, ParallelConfig(tp=tp)) == expected


def test_llama_style_config(tiny_config: TinyConfig) -> None:
    model = tiny_config(
        num_layers=4, hidden_size=64, num_attention_heads=8, num_query_groups=2, ffn_hidden_size=176
    )
    config = build_transformer_config(model, ParallelConfig(tp=2, pp=2))
    assert config.gated_linear_unit and config.activation_func is F.silu
    assert config.num_query_groups == 2 and config.ffn_hidden_size == 176
    assert config.normalization == "RMSNorm"
    assert config.tensor_model_parallel_size == 2 and config.pipeline_model_parallel_size == 2
    assert config.params_dtype == config.pipeline_dtype == torch.float32 and not config.bf16
    assert config.cuda_graph_scope == [] and not config.gradient_accumulation_fusion
    assert config.fp8 is None and config.recompute_granularity is None


def test_gpt2_style_config_and_precision(tiny_config: TinyConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    from nemo_rpo.distributed import cpu_support

    monkeypatch.setattr(cpu_support, "cpu_has_bf16_matmul", lambda: True)  # bf16 on any CPU (or GPU)
    model = tiny_config(activation="gelu", normalization="LayerNorm", add_bias_linear=True, precision="bf16")
    config = build_transformer_config(model, ParallelConfig())
    assert not config.gated_linear_unit and config.activation_func is F.gelu
    assert config.ffn_hidden_size == 4 * model.hidden_size
    assert config.add_bias_linear and config.normalization == "LayerNorm"
    assert config.bf16 and not config.fp16 and config.params_dtype == config.pipeline_dtype == torch.bfloat16


@pytest.mark.parametrize("granularity", ["full", "selective"])
def test_recompute(tiny_config: TinyConfig, granularity: str) -> None:
    config = build_transformer_config(tiny_config(recompute_granularity=granularity), ParallelConfig())
    assert config.recompute_granularity == granularity
    if granularity == "full":
        assert config.recompute_method == "uniform" and config.recompute_num_layers == 1


@on_cpu
def test_cpu_uses_local_spec_without_importing_transformer_engine(tiny_config: TinyConfig) -> None:
    model = tiny_config(transformer_impl="auto")
    assert not uses_transformer_engine(model)
    spec = layer_spec(model)
    assert "transformer_engine" not in sys.modules
    assert spec.submodules.self_attention.submodules.linear_qkv is ColumnParallelLinear
    assert build_transformer_config(model, ParallelConfig()).use_cpu_initialization
    with pytest.raises(ConfigError, match="model.fp8"):
        layer_spec(tiny_config(transformer_impl="auto", fp8="hybrid"))


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("untie", [False, True])
def test_build_gpt_model(world1: ParallelInfo, tiny_config: TinyConfig, untie: bool) -> None:
    model = build_gpt_model(
        tiny_config(untie_embeddings_and_output_weights=untie), ParallelConfig(), vocab_size=100
    )
    names = dict(model.named_parameters())
    assert names["embedding.word_embeddings.weight"].shape == (128, 32)
    assert ("output_layer.weight" in names) == untie
    assert "embedding.position_embeddings.weight" not in names  # RoPE has no learned table
    per_layer = 4 * 32 * 32 + 3 * 32 * 128 + 2 * 32  # qkv + proj, SwiGLU fc1 (2x) + fc2, two RMSNorms
    assert num_params(model) == 2 * per_layer + 128 * 32 * (2 if untie else 1) + 32  # + final norm


def test_learned_positions_and_layernorm(world1: ParallelInfo, tiny_config: TinyConfig) -> None:
    cfg = tiny_config(num_layers=1, position_embedding_type="learned_absolute", normalization="LayerNorm")
    model = build_gpt_model(cfg, ParallelConfig(), vocab_size=100)
    names = dict(model.named_parameters())
    assert names["embedding.position_embeddings.weight"].shape == (16, 32)
    assert "decoder.final_layernorm.bias" in names
    out = model(torch.zeros(2, 16, dtype=torch.long), torch.arange(16).expand(2, 16), None)
    assert out.shape == (2, 16, 128)


def test_model_parallel_mismatch_is_a_config_error(world1: ParallelInfo, tiny_config: TinyConfig) -> None:
    with pytest.raises(ConfigError, match="parallel"):
        build_gpt_model(tiny_config(), ParallelConfig(tp=2), vocab_size=100)


def test_layout_invariant_init(world1: ParallelInfo, tiny_config: TinyConfig) -> None:
    """Seeded re-initialisation: deterministic per seed, megatron's distributions, layers differ.

    That it is the same model at TP=2/PP=2 is proven end to end by tests/distributed/test_cli_layouts.py.
    """
    cfg = tiny_config(
        num_layers=2, hidden_size=64, ffn_hidden_size=256, untie_embeddings_and_output_weights=True
    )
    a = dict(build_gpt_model(cfg, ParallelConfig(), vocab_size=1000, init_seed=7).named_parameters())
    b = dict(build_gpt_model(cfg, ParallelConfig(), vocab_size=1000, init_seed=7).named_parameters())
    c = dict(build_gpt_model(cfg, ParallelConfig(), vocab_size=1000, init_seed=8).named_parameters())
    for name, value in a.items():
        torch.testing.assert_close(value, b[name], atol=0, rtol=0, msg=name)
        if value.dim() == 2:
            assert not torch.equal(value, c[name]), name
    std = cfg.init_method_std
    qkv = a["decoder.layers.0.self_attention.linear_qkv.weight"]
    fc2 = a["decoder.layers.1.mlp.linear_fc2.weight"]
    assert abs(qkv.std().item() - std) < 0.1 * std and abs(qkv.mean().item()) < 0.1 * std
    assert abs(fc2.std().item() - std / 2.0) < 0.1 * std  # std / sqrt(2 * num_layers)
    assert not torch.equal(qkv, a["decoder.layers.1.self_attention.linear_qkv.weight"])  # per-layer streams
    fc1 = a["decoder.layers.0.mlp.linear_fc1.weight"]
    assert not torch.equal(fc1[:256], fc1[256:])  # the two SwiGLU halves are different draws
    assert torch.equal(a["decoder.final_layernorm.weight"], torch.ones(64))  # constants left as built
