"""The two-pass RoPE, the TP=1 log-softmax NLL and the SwiGLU MLP compute megatron's numbers, forward and backward."""

from __future__ import annotations

import pytest
import torch
from megatron.core import tensor_parallel
from megatron.core.models.common.embeddings import rope_utils
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer import attention
from megatron.core.transformer.mlp import MLP
from megatron.core.transformer.spec_utils import build_module

from nemo_rpo.config.schema import ParallelConfig
from nemo_rpo.distributed.launch import ParallelInfo
from nemo_rpo.models import mlp as swiglu_mlp
from nemo_rpo.models import rope as rope_module
from nemo_rpo.models.gpt import build_gpt_model, build_transformer_config, layer_spec
from nemo_rpo.models.logps import token_logps, vocab_parallel_nll
from nemo_rpo.models.rope import apply_rotary_pos_emb, rotate


def _freqs(s: int, rot: int) -> torch.Tensor:
    inv = 1.0 / 10000 ** (torch.arange(0, rot, 2).float() / rot)
    f = torch.outer(torch.arange(s).float(), inv)
    return torch.cat((f, f), dim=-1)[:, None, None, :]  # megatron's [s, 1, 1, rot] layout


@pytest.mark.parametrize(("rot", "mscale"), [(16, 1.0), (8, 1.0), (16, 0.7)])
def test_rotate_matches_megatron(rot: int, mscale: float) -> None:
    """Full and partial rotary dims, a yarn-style mscale, and a strided input (q split from fused QKV)."""
    s, b, n, d = 6, 3, 2, 16
    gen = torch.Generator().manual_seed(0)
    mixed = torch.randn(s, b, n, 3 * d, generator=gen)
    freqs = _freqs(s, rot)
    grad_out = torch.randn(s, b, n, d, generator=gen)
    results = []
    for fn in (lambda t: rope_utils._apply_rotary_pos_emb_bshd(t, freqs, mscale=mscale),
               lambda t: rotate(t, freqs, mscale)):  # fmt: skip
        leaf = mixed.clone().requires_grad_()
        q = leaf[..., d : 2 * d]  # a non-contiguous view, as megatron's split gives
        out = fn(q)
        (grad,) = torch.autograd.grad(out, leaf, grad_out)
        results.append((out, grad))
    (want, want_grad), (got, got_grad) = results
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got_grad, want_grad, atol=1e-6, rtol=1e-6)


def test_apply_rotary_pos_emb_falls_back_for_interleaved(world1: ParallelInfo, tiny_config) -> None:
    config = build_transformer_config(tiny_config(), ParallelConfig())
    config.rotary_interleaved = True
    t = torch.randn(5, 2, 2, 8)
    freqs = torch.randn(5, 1, 1, 8)
    want = rope_utils.apply_rotary_pos_emb(t, freqs, config)
    torch.testing.assert_close(apply_rotary_pos_emb(t, freqs, config), want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nll_matches_vocab_parallel_cross_entropy(world1: ParallelInfo, dtype: torch.dtype) -> None:
    s, b, v = 7, 3, 50
    gen = torch.Generator().manual_seed(2)
    base = (4 * torch.randn(s, b, v, generator=gen)).to(dtype)
    labels = torch.randint(0, v, (s, b), generator=gen)
    grad_out = torch.randn(s, b, generator=gen)
    results = []
    for fn in (tensor_parallel.vocab_parallel_cross_entropy, vocab_parallel_nll):
        leaf = base.clone().requires_grad_()
        nll = fn(leaf * 1, labels)  # * 1: both overwrite their input, which must not be a leaf
        (grad,) = torch.autograd.grad(nll, leaf, grad_out)
        results.append((nll, grad))
    (want, want_grad), (got, got_grad) = results
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got_grad.float(), want_grad.float(), atol=tol, rtol=tol)


def test_nll_out_of_range_label_keeps_megatron_semantics(world1: ParallelInfo) -> None:
    logits = torch.randn(4, 10)
    labels = torch.tensor([1, 12, 3, 0])  # 12 is outside the vocabulary: megatron gives logsumexp
    want = tensor_parallel.vocab_parallel_cross_entropy(logits.clone(), labels)
    torch.testing.assert_close(vocab_parallel_nll(logits.clone(), labels), want)
    torch.testing.assert_close(token_logps(logits, torch.tensor([1, -100, 3, 0]))[1], torch.tensor(0.0))


def _tiny_model_and_batch(tiny_config, b: int, seed: int):
    """An untied tiny policy (vocab 100) and random ``ids, labels, pos`` ``[b, s]`` plus the generator."""
    cfg = tiny_config(transformer_impl="local", untie_embeddings_and_output_weights=True)
    model = build_gpt_model(cfg, ParallelConfig(), 100, init_seed=3)
    gen = torch.Generator().manual_seed(seed)
    s = cfg.max_seq_len
    ids = torch.randint(0, 100, (b, s), generator=gen)
    labels = torch.randint(0, 100, (b, s), generator=gen)
    return model, ids, labels, torch.arange(s).expand(b, s), gen


def test_policy_model_equals_megatron_paths(world1: ParallelInfo, tiny_config, monkeypatch) -> None:
    """Whole model: loss and every weight gradient equal megatron's RoPE + cross-entropy."""
    model, ids, labels, pos, gen = _tiny_model_and_batch(tiny_config, 2, seed=4)
    weight = torch.rand(*ids.shape, generator=gen)

    def run():
        model.zero_grad()
        nll = model(ids, pos, None, labels=labels)
        (nll * weight).sum().backward()
        return nll.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    got, got_grads = run()
    monkeypatch.setattr(attention, "apply_rotary_pos_emb", rope_utils.apply_rotary_pos_emb)
    monkeypatch.setattr(type(model), "compute_language_model_loss", GPTModel.compute_language_model_loss)
    want, want_grads = run()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)


def test_loss_mask_span_equals_full_head(world1: ParallelInfo, tiny_config) -> None:
    """With ``loss_mask``, the LM head runs only over the counted columns: the counted NLL values and
    every weight gradient equal those of the full-sequence head, and uncounted columns are 0."""
    model, ids, labels, pos, gen = _tiny_model_and_batch(tiny_config, 3, seed=5)
    b, s = ids.shape
    mask = torch.zeros(b, s)
    mask[0, 5 : s - 3] = 1.0  # rows with different prompt lengths: the span is the union
    mask[1, 9 : s - 1] = 1.0
    mask[2, 7:12] = 1.0
    weight = torch.rand(b, s, generator=gen) * mask

    def run(**kwargs):
        model.zero_grad()
        nll = model(ids, pos, None, labels=labels, **kwargs)
        (nll * weight).sum().backward()
        return nll.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    full, full_grads = run()
    span, span_grads = run(loss_mask=mask)
    assert span.shape == full.shape
    assert torch.equal(span[:, :5], torch.zeros(b, 5)) and torch.equal(span[:, s - 1 :], torch.zeros(b, 1))
    assert span[:, 5 : s - 1].abs().min() > 0  # computed (an NLL over 100 tokens is never 0)
    torch.testing.assert_close(span[:, 5 : s - 1], full[:, 5 : s - 1], atol=1e-6, rtol=1e-6)
    for name, grad in full_grads.items():
        torch.testing.assert_close(span_grads[name], grad, atol=1e-6, rtol=1e-6, msg=name)


@pytest.mark.parametrize("bias", [False, True])
def test_swiglu_mlp_is_bit_identical_to_megatron(
    world1: ParallelInfo, tiny_config, monkeypatch, bias
) -> None:
    """The local spec's MLP: output, input gradient and every weight gradient ``torch.equal`` megatron's
    autograd SwiGLU (``chunk``, ``silu``, ``* (x_linear + 0.0)``)."""
    cfg = tiny_config(transformer_impl="local", add_bias_linear=bias)
    mlp = build_module(layer_spec(cfg).submodules.mlp, config=build_transformer_config(cfg, ParallelConfig()))
    assert type(mlp) is MLP and MLP.forward is swiglu_mlp.forward
    gen = torch.Generator().manual_seed(6)
    if bias:  # megatron initialises biases to 0
        for name, p in mlp.named_parameters():
            if name.endswith("bias"):
                p.data.copy_(torch.randn(p.shape, generator=gen))
    x = torch.randn(5, 3, cfg.hidden_size, generator=gen)
    grad_out = torch.randn(5, 3, cfg.hidden_size, generator=gen)

    def run():
        mlp.zero_grad()
        leaf = x.clone().requires_grad_()
        out, out_bias = mlp(leaf)
        assert (out_bias is not None) == bias
        out = out if out_bias is None else out + out_bias
        out.backward(grad_out)
        return out.detach(), leaf.grad, {n: p.grad.clone() for n, p in mlp.named_parameters()}

    got, got_dx, got_grads = run()
    monkeypatch.setattr(MLP, "forward", swiglu_mlp._MEGATRON_FORWARD)
    want, want_dx, want_grads = run()
    assert torch.equal(got, want) and torch.equal(got_dx, want_dx)
    assert got_grads.keys() == want_grads.keys()
    for name, grad in want_grads.items():
        assert torch.equal(got_grads[name], grad), name


def test_swiglu_mlp_leaves_other_activations_to_megatron(world1: ParallelInfo, tiny_config) -> None:
    cfg = tiny_config(transformer_impl="local", activation="gelu")
    mlp = build_module(layer_spec(cfg).submodules.mlp, config=build_transformer_config(cfg, ParallelConfig()))
    x = torch.randn(4, 2, cfg.hidden_size)
    assert not swiglu_mlp._plain_swiglu(mlp, None)
    assert torch.equal(mlp(x)[0], swiglu_mlp._MEGATRON_FORWARD(mlp, x)[0])


def test_fast_paths_off_run_megatrons_code(world1: ParallelInfo, tiny_config, monkeypatch) -> None:
    """``model.fast_paths=false``: even with the patches installed (by another model of the process),
    this model's MLP and RoPE run megatron's functions, and give their numbers."""
    on = tiny_config(transformer_impl="local")
    layer_spec(on)  # installs the fast_paths patches for the process
    assert attention.apply_rotary_pos_emb is apply_rotary_pos_emb and MLP.forward is swiglu_mlp.forward
    cfg = tiny_config(transformer_impl="local", fast_paths=False)
    config = build_transformer_config(cfg, ParallelConfig())
    mlp = build_module(layer_spec(cfg).submodules.mlp, config=config)
    assert not swiglu_mlp._plain_swiglu(mlp, None)

    def fail(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a fast path ran with model.fast_paths=false")

    monkeypatch.setattr(swiglu_mlp._SwiGLU, "apply", fail)
    monkeypatch.setattr(rope_module._Rotate, "apply", fail)
    x = torch.randn(4, 2, cfg.hidden_size)
    assert torch.equal(mlp(x)[0], swiglu_mlp._MEGATRON_FORWARD(mlp, x)[0])
    t, freqs = torch.randn(5, 2, 4, 8), _freqs(5, 8)
    assert torch.equal(
        apply_rotary_pos_emb(t, freqs, config), rope_utils.apply_rotary_pos_emb(t, freqs, config)
    )
