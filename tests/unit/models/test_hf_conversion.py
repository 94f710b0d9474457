"""Hugging Face <-> Megatron: logits equal HF's, the round trip is bit-exact, bad inputs fail by name.

Tiny random HF models built with ``transformers`` (``tests/hf_tiny.py``): Llama with GQA and untied
embeddings, Qwen2 with q/k/v biases and tied embeddings. TP=2 logits: tests/distributed/test_hf_tp2.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hf_tiny import VOCAB, tiny_hf_model  # noqa: E402

from nemo_rpo.config.schema import ConfigError, ModelConfig, ParallelConfig  # noqa: E402
from nemo_rpo.models.gpt import build_gpt_model  # noqa: E402
from nemo_rpo.models.hf_io import load_hf_weights_  # noqa: E402
from nemo_rpo.models.hf_mapping import (  # noqa: E402
    check_sequence_fits,
    hf_config_from_model,
    hf_to_megatron,
    megatron_to_hf,
    model_fields_from_hf,
)

KINDS = ["llama", "qwen2"]


def _megatron_from_hf(hf_model) -> tuple[torch.nn.Module, ModelConfig]:
    cfg = ModelConfig(
        **model_fields_from_hf(hf_model.config.to_dict()), max_seq_len=64, transformer_impl="local"
    )
    model = build_gpt_model(cfg, ParallelConfig(), cfg.vocab_size)
    load_hf_weights_(model, hf_model.state_dict(), cfg)
    return model.eval(), cfg


@pytest.mark.parametrize("kind", KINDS)
def test_logits_equal_hf(world1, kind):
    hf = tiny_hf_model(kind)
    model, cfg = _megatron_from_hf(hf)
    assert cfg.add_qkv_bias == (kind == "qwen2")
    assert cfg.untie_embeddings_and_output_weights == (kind == "llama")
    assert cfg.num_query_groups == 2 and cfg.num_attention_heads == 4
    ids = torch.randint(0, VOCAB, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(ids, torch.arange(40).expand(3, -1), None)
        theirs = hf(ids).logits
    assert ours.shape == theirs.shape  # no vocabulary padding: the softmax is HF's
    assert theirs.abs().max() > 1.0  # the comparison is not between near-zero numbers
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_is_bit_exact(world1, kind):
    hf = tiny_hf_model(kind)
    model, cfg = _megatron_from_hf(hf)
    state = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    back = megatron_to_hf(state, cfg)
    original = hf.state_dict()
    if not cfg.untie_embeddings_and_output_weights:
        original.pop("lm_head.weight")  # tied: transformers re-creates it from the embedding
    assert set(back) == set(original)
    for name, tensor in original.items():
        assert torch.equal(back[name], tensor), name


def test_transformer_engine_names_round_trip():
    # The TE spec fuses the norms into the linears; the mapping must move them there and back.
    hf = tiny_hf_model("qwen2")
    cfg = ModelConfig(**model_fields_from_hf(hf.config.to_dict()))
    te = hf_to_megatron(hf.state_dict(), cfg, te=True)
    assert "decoder.layers.1.self_attention.linear_qkv.layer_norm_weight" in te
    assert "decoder.layers.1.mlp.linear_fc1.layer_norm_weight" in te
    assert not any("input_layernorm" in k or "pre_mlp_layernorm" in k for k in te)
    back = megatron_to_hf(te, cfg, te=True)
    for name, tensor in back.items():
        assert torch.equal(tensor, hf.state_dict()[name]), name


def test_qkv_interleaving_is_per_query_group():
    # Rows of linear_qkv, group by group: that group's 2 q heads, then its k head, then its v head.
    hf = tiny_hf_model("llama")
    cfg = ModelConfig(**model_fields_from_hf(hf.config.to_dict()))
    qkv = hf_to_megatron(hf.state_dict(), cfg)["decoder.layers.0.self_attention.linear_qkv.weight"]
    attn = hf.model.layers[0].self_attn
    d = 16
    group1 = qkv[4 * d : 8 * d]
    torch.testing.assert_close(group1[: 2 * d], attn.q_proj.weight[2 * d : 4 * d], atol=0, rtol=0)
    torch.testing.assert_close(group1[2 * d : 3 * d], attn.k_proj.weight[d : 2 * d], atol=0, rtol=0)
    torch.testing.assert_close(group1[3 * d :], attn.v_proj.weight[d : 2 * d], atol=0, rtol=0)


def test_exported_config_keeps_the_base_and_sets_the_shape():
    hf = tiny_hf_model("qwen2")
    base = hf.config.to_dict()
    cfg = ModelConfig(**model_fields_from_hf(base))
    out = hf_config_from_model(cfg, base, "bfloat16")
    assert out["architectures"] == ["Qwen2ForCausalLM"] and out["tie_word_embeddings"] is True
    assert out["num_key_value_heads"] == 2 and out["vocab_size"] == VOCAB and out["dtype"] == "bfloat16"
    rebuilt = model_fields_from_hf(out)
    assert rebuilt == model_fields_from_hf(base)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}, "architecture"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope scaling 'llama3'"),
        ({"attention_bias": True}, "attention_bias"),
    ],
)
def test_unsupported_configs_are_named(change, message):
    base = tiny_hf_model("llama").config.to_dict()
    with pytest.raises(ConfigError, match=message) as err:
        model_fields_from_hf({**base, **change}, where="x/config.json")
    assert str(err.value).startswith("x/config.json: ")


def test_sequence_limits():
    check_sequence_fits({"max_position_embeddings": 256}, 256)
    with pytest.raises(ConfigError, match="max_position_embeddings 256"):
        check_sequence_fits({"max_position_embeddings": 256}, 512)
    with pytest.raises(ConfigError, match="sliding_window 64"):
        check_sequence_fits({"sliding_window": 64}, 128)  # Mistral-style window shorter than the sequence
    check_sequence_fits({"sliding_window": 64, "use_sliding_window": False}, 128)  # Qwen2 with it off


def test_missing_leftover_and_misshapen_tensors_are_named(world1):
    hf = tiny_hf_model("llama")
    cfg = ModelConfig(**model_fields_from_hf(hf.config.to_dict()))
    state = hf.state_dict()
    with pytest.raises(KeyError, match="model.layers.1.mlp.up_proj.weight"):
        hf_to_megatron({k: v for k, v in state.items() if k != "model.layers.1.mlp.up_proj.weight"}, cfg)
    with pytest.raises(KeyError, match="not used by the 1-layer mapping"):
        hf_to_megatron(state, ModelConfig(**{**model_fields_from_hf(hf.config.to_dict()), "num_layers": 1}))
    wide = ModelConfig(**{**model_fields_from_hf(hf.config.to_dict()), "ffn_hidden_size": 128},
                       transformer_impl="local")  # fmt: skip
    model = build_gpt_model(wide, ParallelConfig(), wide.vocab_size)
    with pytest.raises(ValueError, match="linear_fc1.weight: Hugging Face shape"):
        load_hf_weights_(model, state, wide)
