"""SDPAttention (fused torch kernel) computes what megatron's DotProductAttention computes."""

from __future__ import annotations

import pytest
import torch
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType

from nemo_rpo.config.schema import ParallelConfig
from nemo_rpo.distributed.launch import ParallelInfo
from nemo_rpo.models.attention import SDPAttention
from nemo_rpo.models.gpt import build_gpt_model, build_transformer_config, layer_spec


def _pair(tiny_config, **overrides):
    config = build_transformer_config(tiny_config(**overrides), ParallelConfig())
    kwargs = dict(config=config, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
    return SDPAttention(**kwargs), DotProductAttention(**kwargs), config


@pytest.mark.parametrize("groups", [None, 2])
def test_sdpa_matches_megatron_causal(world1: ParallelInfo, tiny_config, groups) -> None:
    fused, plain, config = _pair(tiny_config, hidden_size=64, num_attention_heads=4, num_query_groups=groups)
    s, b, n, d = 12, 3, 4, 16
    ng = groups or n
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(s, b, n, d, generator=gen, requires_grad=True)
    k = torch.randn(s, b, ng, d, generator=gen, requires_grad=True)
    v = torch.randn(s, b, ng, d, generator=gen, requires_grad=True)
    weight = torch.randn(s, b, n * d, generator=gen)
    out_fused = fused(q, k, v, None)
    grads_fused = torch.autograd.grad((out_fused * weight).sum(), (q, k, v))
    out_plain = plain(q, k, v, None)
    grads_plain = torch.autograd.grad((out_plain * weight).sum(), (q, k, v))
    assert out_fused.shape == out_plain.shape == (s, b, n * d)
    torch.testing.assert_close(out_fused, out_plain, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads_fused, grads_plain):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_sdpa_explicit_mask_and_decode_alignment(world1: ParallelInfo, tiny_config) -> None:
    fused, plain, _ = _pair(tiny_config, hidden_size=64, num_attention_heads=4)
    gen = torch.Generator().manual_seed(1)
    sk, sq, b, n, d = 10, 3, 2, 4, 16
    q = torch.randn(sq, b, n, d, generator=gen)
    k = torch.randn(sk, b, n, d, generator=gen)
    v = torch.randn(sk, b, n, d, generator=gen)
    # Megatron mask convention: True = masked out. The last sq of sk positions attend causally.
    masked = torch.ones(sq, sk, dtype=torch.bool).tril(diagonal=sk - sq).logical_not()
    expected = plain(q, k, v, masked.expand(b, 1, sq, sk), attn_mask_type=AttnMaskType.padding)
    torch.testing.assert_close(fused(q, k, v, masked.expand(b, 1, sq, sk)), expected, atol=1e-5, rtol=1e-5)
    # No mask, fewer queries than keys: bottom-right aligned causal attention, the same numbers.
    torch.testing.assert_close(fused(q, k, v, None), expected, atol=1e-5, rtol=1e-5)


def test_spec_selects_core_attention(tiny_config) -> None:
    sdpa = layer_spec(tiny_config(transformer_impl="local"))
    megatron = layer_spec(tiny_config(transformer_impl="local", core_attention="megatron"))
    assert sdpa.submodules.self_attention.submodules.core_attention is SDPAttention
    assert megatron.submodules.self_attention.submodules.core_attention is DotProductAttention


def test_whole_model_same_logits_either_attention(world1: ParallelInfo, tiny_config) -> None:
    tokens = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(2))
    positions = torch.arange(16).expand(2, 16)
    logits = []
    for impl in ("sdpa", "megatron"):
        cfg = tiny_config(transformer_impl="local", core_attention=impl)
        model = build_gpt_model(cfg, ParallelConfig(), vocab_size=100, init_seed=3)
        logits.append(model(tokens, positions, None))
    torch.testing.assert_close(logits[0], logits[1], atol=1e-5, rtol=1e-5)
