"""Sampling from the Megatron policy: KV cache == full recompute, greedy == argmax, EOS, seeds, log-probs."""

from __future__ import annotations

import pytest
import torch

from nemo_rpo.config.schema import GenerationConfig
from nemo_rpo.data.tokenizer import ByteTokenizer
from nemo_rpo.distributed import cpu_support
from nemo_rpo.generation import GenerationOutput, MegatronGenerator, ResponseGenerator, generate
from nemo_rpo.generation.sampling import sampling_generator
from nemo_rpo.models.logps import forward_token_logps

# Three prompts of different lengths (bos first): rows are consumed at different positions.
PROMPTS = [[257, 114, 101, 118, 10], [257, 115, 111, 114, 116, 58, 32, 51, 10], [257, 117, 10]]
K = 3
ATOL = 1e-5
VOCAB, PAD, EOS = (
    ByteTokenizer.vocab_size,
    ByteTokenizer.pad_id,
    ByteTokenizer.eos_id,
)  # 259 (384 padded), 256, 258


def run(policy, cfg: GenerationConfig, seed: int = 5, step: int = 0, eos_id: int = EOS) -> GenerationOutput:  # noqa: ANN001
    return generate([policy], PROMPTS, cfg, num_samples=K, eos_id=eos_id, pad_id=PAD, vocab_size=VOCAB,
                    generator=sampling_generator(seed, step))  # fmt: skip


def full_logits(policy, tokens: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """``[N, T, V]`` logits of one ordinary (training-style, no cache) forward in eval mode."""
    policy.eval()
    with torch.no_grad():
        positions = torch.arange(tokens.shape[1]).expand_as(tokens)
        return policy(tokens, positions, None)


def check_layout(out: GenerationOutput, max_new_tokens: int) -> None:
    lengths = torch.tensor([len(p) for p in PROMPTS]).repeat_interleave(K)
    assert torch.equal(out.prompt_lengths, lengths)
    for row in range(out.tokens.shape[0]):
        start, n = int(lengths[row]), int(out.response_lengths[row])
        assert out.tokens[row, :start].tolist() == PROMPTS[row // K]
        assert out.response_mask[row].tolist() == [0.0] * start + [1.0] * n + [0.0] * (
            out.tokens.shape[1] - start - n
        )
        assert (out.tokens[row, start + n :] == PAD).all()
        assert 1 <= n <= max_new_tokens
        assert (out.logps[row, start : start + n] < 0).all() and (
            out.logps[row][out.response_mask[row] == 0] == 0
        ).all()


@pytest.mark.parametrize(
    "cfg",
    [
        GenerationConfig(max_new_tokens=8),
        GenerationConfig(max_new_tokens=8, temperature=0.7, top_k=20, top_p=0.9),
        GenerationConfig(max_new_tokens=8, temperature=0.0),
    ],
    ids=["plain", "filtered", "greedy"],
)
def test_kv_cache_matches_full_recompute(policy, cfg: GenerationConfig) -> None:  # noqa: ANN001
    cached = run(policy, cfg)
    cfg.use_kv_cache = False
    recomputed = run(policy, cfg)
    check_layout(cached, cfg.max_new_tokens)
    assert torch.equal(cached.tokens, recomputed.tokens)
    assert torch.equal(cached.response_mask, recomputed.response_mask)
    torch.testing.assert_close(cached.logps, recomputed.logps, atol=ATOL, rtol=0)
    # A policy this peaked repeats tokens, but sampling must not collapse every row to one sequence.
    if cfg.temperature > 0:
        assert len({tuple(row.tolist()) for row in cached.tokens}) > len(PROMPTS)


def test_greedy_is_argmax_of_a_full_forward(policy) -> None:  # noqa: ANN001
    out = run(policy, GenerationConfig(max_new_tokens=8, temperature=0.0))
    logits = full_logits(policy, out.tokens)
    predicted = logits[:, :-1, :VOCAB].argmax(dim=-1)  # predicted[:, t] is the token at t + 1
    mask = out.response_mask[:, 1:].bool()
    assert mask.sum() == out.response_lengths.sum() > 0
    assert torch.equal(out.tokens[:, 1:][mask], predicted[mask])
    # Every K greedy samples of a prompt are identical.
    for b in range(len(PROMPTS)):
        assert (out.tokens[b * K : (b + 1) * K] == out.tokens[b * K]).all()


def test_logps_equal_a_teacher_forced_forward(policy) -> None:  # noqa: ANN001
    out = run(policy, GenerationConfig(max_new_tokens=8, temperature=1.0))
    labels = torch.cat([out.tokens[:, 1:], torch.full_like(out.tokens[:, :1], PAD)], dim=1)
    policy.eval()
    with torch.no_grad():
        positions = torch.arange(out.tokens.shape[1]).expand_as(out.tokens)
        teacher = forward_token_logps(
            policy, out.tokens, positions, labels
        )  # teacher[:, t] = log p(tokens[t+1])
    mask = out.response_mask[:, 1:]
    torch.testing.assert_close(out.logps[:, 1:], teacher[:, :-1] * mask, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.seq_logps(), (teacher[:, :-1] * mask).sum(1), atol=1e-4, rtol=0)


def test_eos_stops_and_masks(policy) -> None:  # noqa: ANN001
    cfg = GenerationConfig(max_new_tokens=8, temperature=0.0)
    free = run(policy, cfg)
    row = 3  # prompt 1: pick its third greedy token as "eos"
    start = len(PROMPTS[1])
    eos = int(free.tokens[row, start + 2])
    stopped = run(policy, cfg, eos_id=eos)
    assert free.response_lengths.tolist() == [8] * (K * len(PROMPTS))  # no stop without the eos
    for r in range(free.tokens.shape[0]):
        p = int(free.prompt_lengths[r])
        response = free.tokens[r, p : p + 8].tolist()
        n = response.index(eos) + 1 if eos in response else 8
        assert int(stopped.response_lengths[r]) == n
        assert stopped.tokens[r, p : p + n].tolist() == response[:n]
        assert (stopped.tokens[r, p + n :] == PAD).all() and stopped.response_mask[r, p + n :].sum() == 0
    # Row 3 stops at its third token at the latest (earlier if it produced that token before).
    assert (
        int(stopped.response_lengths[row]) <= 3
        and int(stopped.tokens[row, start + int(stopped.response_lengths[row]) - 1]) == eos
    )
    # The batch ends as soon as every row has stopped.
    assert stopped.tokens.shape[1] == int((stopped.prompt_lengths + stopped.response_lengths).max())


def test_seeded_reproducibility(policy) -> None:  # noqa: ANN001
    cfg = GenerationConfig(max_new_tokens=8, temperature=1.0)
    first, again = run(policy, cfg, seed=3, step=1), run(policy, cfg, seed=3, step=1)
    assert torch.equal(first.tokens, again.tokens) and torch.equal(first.logps, again.logps)
    assert not torch.equal(first.tokens, run(policy, cfg, seed=3, step=2).tokens)


def test_weights_in_place_and_train_mode_restored(policy) -> None:  # noqa: ANN001
    policy.train()
    before = {name: (p.data_ptr(), p.detach().clone()) for name, p in policy.named_parameters()}
    generator = MegatronGenerator([policy], GenerationConfig(max_new_tokens=4), eos_id=EOS, pad_id=PAD,
                                  vocab_size=VOCAB)  # fmt: skip
    assert isinstance(generator, ResponseGenerator)
    out = generator.generate(PROMPTS[:1], 2, sampling_generator(0, 0))
    assert out.tokens.shape == (2, len(PROMPTS[0]) + 4) and out.num_prompts == 1
    assert len(out.response_ids()[0]) == int(out.response_lengths[0])
    assert policy.training
    for name, p in policy.named_parameters():
        assert p.data_ptr() == before[name][0] and torch.equal(p, before[name][1]), name
        assert p.grad is None


def test_errors(policy) -> None:  # noqa: ANN001
    kwargs = dict(num_samples=2, eos_id=EOS, pad_id=PAD, vocab_size=VOCAB)
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(policy, [[1] * 30], GenerationConfig(max_new_tokens=8, temperature=0.0), **kwargs)
    with pytest.raises(ValueError, match="torch.Generator"):
        generate(policy, [[1, 2]], GenerationConfig(), **kwargs)
    with pytest.raises(ValueError, match="outside"):
        generate(policy, [[1, VOCAB]], GenerationConfig(temperature=0.0), **kwargs)
    with pytest.raises(ValueError, match="one model chunk"):
        generate([policy, policy], [[1, 2]], GenerationConfig(temperature=0.0), **kwargs)


def test_cached_decoder_applies_to_the_test_policy(policy) -> None:  # noqa: ANN001
    """The tests above exercise :class:`CachedDecoder` (the default), not megatron's inference path."""
    from nemo_rpo.generation.cached_decoder import unsupported

    assert unsupported(policy) is None


@pytest.mark.parametrize("cached_decoder", [True, False], ids=["cached-decoder", "megatron-inference"])
@pytest.mark.parametrize(
    "cfg",
    [GenerationConfig(max_new_tokens=8), GenerationConfig(max_new_tokens=8, temperature=0.0)],
    ids=["plain", "greedy"],
)
def test_shared_prefill_matches_per_sample_prefill(
    policy, cfg: GenerationConfig, cached_decoder: bool
) -> None:  # noqa: ANN001
    """One prefill per prompt, its cache copied to the K rows == one prefill per row: tokens, log-probs."""

    def sample(shared: bool) -> GenerationOutput:
        return generate([policy], PROMPTS, cfg, num_samples=K, eos_id=EOS, pad_id=PAD, vocab_size=VOCAB,
                        generator=sampling_generator(5, 0), shared_prefill=shared,
                        cached_decoder=cached_decoder)  # fmt: skip

    shared, per_sample = sample(True), sample(False)
    check_layout(shared, cfg.max_new_tokens)
    assert torch.equal(shared.tokens, per_sample.tokens)
    assert torch.equal(shared.response_mask, per_sample.response_mask)
    torch.testing.assert_close(shared.logps, per_sample.logps, atol=ATOL, rtol=0)
    if cfg.temperature > 0:
        assert len({tuple(row.tolist()) for row in shared.tokens}) > len(PROMPTS)


def test_cached_decoder_matches_megatron_inference(policy) -> None:  # noqa: ANN001
    """The cached decoder and megatron's static-inference path sample the same tokens and log-probs."""
    cfg = GenerationConfig(max_new_tokens=8, temperature=0.7, top_k=20, top_p=0.9)

    def sample(cached_decoder: bool) -> GenerationOutput:
        return generate([policy], PROMPTS, cfg, num_samples=K, eos_id=EOS, pad_id=PAD, vocab_size=VOCAB,
                        generator=sampling_generator(2, 0), cached_decoder=cached_decoder)  # fmt: skip

    fast, megatron = sample(True), sample(False)
    assert torch.equal(fast.tokens, megatron.tokens)
    torch.testing.assert_close(fast.logps, megatron.logps, atol=ATOL, rtol=0)


@pytest.mark.parametrize("layout", ["weight-copies", "weight-views", "packed-fp32"])
def test_lean_step_matches_the_module_step(policy, layout: str) -> None:  # noqa: ANN001
    """The lean one-token step (plain tensor ops; on the CPU [in, out] weight copies, or oneDNN-packed
    copies where ``packed_fp32_decoding``) == the step through megatron's modules: logits and every
    layer's cached keys/values within 1e-5; the weights untouched."""
    from nemo_rpo.generation import cached_decoder
    from nemo_rpo.generation.cached_decoder import CachedDecoder

    if layout == "packed-fp32" and not cpu_support._onednn_available():
        pytest.skip("torch without oneDNN")
    prompts = torch.tensor([p[:3] for p in PROMPTS])
    policy.eval()
    before = {name: p.detach().clone() for name, p in policy.named_parameters()}
    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(CachedDecoder, "transpose_weights", layout != "weight-views")
        mp.setattr(cpu_support, "packed_fp32_decoding", lambda: layout == "packed-fp32")
        lean, modules = CachedDecoder(policy, 6, 12), CachedDecoder(policy, 6, 12)
        modules.lean = modules.head = None  # every layer and the output layer through their modules
        assert lean.lean is not None and lean.head is not None  # the tests above run the lean step
        assert all(layer.packed == (layout == "packed-fp32") for layer in lean.lean)
        packed_head = lean.head_product is cached_decoder._packed_product  # oneDNN's copy of [V, h]
        assert packed_head == (layout == "packed-fp32")
        torch.testing.assert_close(lean.prefill(prompts, 2), modules.prefill(prompts, 2), atol=ATOL, rtol=0)
        for t in range(4):
            ids = torch.arange(6) * 7 + t
            torch.testing.assert_close(lean.step(ids), modules.step(ids), atol=ATOL, rtol=0)
        assert lean.prompt_keys is not None and modules.prompt_keys is None  # each prompt's cache once
        for a, b in zip(lean.cached_kv(), modules.cached_kv(), strict=True):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    for name, p in policy.named_parameters():
        assert torch.equal(p, before[name]), name


@pytest.mark.parametrize("scale", ["folded", "in-attention"])
def test_prompt_shared_cache_matches_a_cache_per_row(policy, scale: str) -> None:  # noqa: ANN001
    """K samples of left-padded prompts: keeping each prompt's keys and values once for its K rows
    (``_prompt_shared_attention``) == a cache row per sample stepped through megatron's modules: logits of
    the prefill and of four steps, and what every row attends to, within 1e-5; the softmax scale folded
    into the queries or applied to the scores alike."""
    from nemo_rpo.generation.cached_decoder import CachedDecoder

    width, pads = 5, torch.tensor([2, 0, 3])
    prompts = torch.tensor([[257] * int(n) + p[1 : 1 + width - int(n)] for p, n in zip(PROMPTS, pads)])
    policy.eval()
    with torch.no_grad():
        shared, per_row = CachedDecoder(policy, 6, 12), CachedDecoder(policy, 6, 12)
        per_row.lean = per_row.head = None  # every layer and the output layer through their modules
        if scale == "in-attention":
            shared.by_head = None
        torch.testing.assert_close(shared.prefill(prompts, 2, pads),
                                   per_row.prefill(prompts.repeat_interleave(2, 0), 1, pads.repeat_interleave(2)),
                                   atol=ATOL, rtol=0)  # fmt: skip
        assert shared.prompt_keys is not None and shared.prompt_keys[0].shape[1] == 3  # once per prompt
        assert per_row.prompt_keys is None and shared.key_mask is None
        for t in range(4):
            ids = torch.arange(6) * 5 + t
            torch.testing.assert_close(shared.step(ids), per_row.step(ids), atol=ATOL, rtol=0)
        for a, b in zip(shared.cached_kv(), per_row.cached_kv(), strict=True):
            assert a[0].shape == (6, shared.groups, width + 4, shared.head_dim)
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


@pytest.mark.parametrize("onednn", [True, False])
def test_packed_decoding_follows_the_onednn_switch(policy, onednn: bool) -> None:  # noqa: ANN001
    """``trainer.deterministic`` turns oneDNN off (``use_onednn(False)``): then no decoding step packs its
    weights, in fp32 or bf16, even on a CPU with bf16 products or of another vendor than Intel."""
    from nemo_rpo.generation.cached_decoder import CachedDecoder

    if onednn and not cpu_support._onednn_available():
        pytest.skip("torch without oneDNN")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cpu_support, "_ONEDNN", onednn)
        mp.setattr(cpu_support, "cpu_has_bf16_matmul", lambda: True)
        mp.setattr(cpu_support, "cpu_vendor", lambda: "AuthenticAMD")
        assert cpu_support.packed_decoding(torch.float32) == onednn
        assert cpu_support.packed_decoding(torch.bfloat16) == onednn
        assert not cpu_support.packed_decoding(torch.float16)
        if not onednn:  # the decoder itself, bf16 (packing would run oneDNN's bf16 kernels)
            tensors = [*policy.parameters(), *policy.buffers()]
            fp32 = [t.data for t in tensors]
            try:
                with torch.no_grad():
                    lean = CachedDecoder(policy.eval().bfloat16(), 6, 12)
                assert lean.lean is not None and not any(layer.packed for layer in lean.lean)
            finally:
                for t, data in zip(tensors, fp32, strict=True):
                    t.data = data


@pytest.mark.skipif(
    not cpu_support.cpu_has_bf16_matmul(), reason="packed bf16 operands need AVX-512-BF16/AMX"
)
def test_lean_step_bf16_packed_weights_match_the_module_step(policy) -> None:  # noqa: ANN001
    """In bf16 the lean step multiplies by oneDNN-packed weight copies: the same logits and cached keys as
    the step through megatron's bf16 modules, to bf16 rounding (a wrong layout would differ by O(1))."""
    from nemo_rpo.generation.cached_decoder import CachedDecoder

    tensors = [*policy.parameters(), *policy.buffers()]
    fp32 = [t.data for t in tensors]
    prompts = torch.tensor([p[:3] for p in PROMPTS])
    try:
        model = policy.eval().bfloat16()  # the fixture's fp32 tensors are put back below
        with torch.no_grad():
            lean, modules = CachedDecoder(model, 6, 12), CachedDecoder(model, 6, 12)
            modules.lean = modules.head = None
            assert lean.lean is not None and all(layer.packed for layer in lean.lean)
            lean.prefill(prompts, 2), modules.prefill(prompts, 2)
            for t in range(4):
                ids = torch.arange(6) * 7 + t
                a, b = lean.step(ids), modules.step(ids)
                assert a.dtype == torch.float32
                torch.testing.assert_close(a, b, atol=0.05, rtol=0.02)  # the padded ids' -inf alike
            n = lean.length
            for a, b in zip(lean.keys + lean.values, modules.keys + modules.values, strict=True):
                assert a.dtype == torch.bfloat16
                torch.testing.assert_close(a[:, :, :n], b[:, :, :n], atol=0.05, rtol=0.02)
    finally:
        for t, data in zip(tensors, fp32, strict=True):
            t.data = data


@pytest.mark.parametrize(
    "cfg",
    [GenerationConfig(max_new_tokens=6), GenerationConfig(max_new_tokens=6, temperature=0.0)],
    ids=["plain", "greedy"],
)
def test_ragged_prompts_one_step_per_sampled_token(policy, cfg: GenerationConfig) -> None:  # noqa: ANN001
    """Prompts of 2 to 23 tokens: the cached decoder left-pads them into one prefill and then runs one step
    per sampled token (5 for 6 tokens, not 21 + 5 from the shortest prompt), sampling the same tokens and
    log-probs as megatron's path, which feeds the longer prompts token by token."""
    from nemo_rpo.generation.cached_decoder import CachedDecoder

    prompts = [[257, 104], [257, *range(97, 119)], [257, 120, 121, 122, 10]]
    steps = []
    step = CachedDecoder.step

    def counted(self, input_ids):  # noqa: ANN001, ANN202
        steps.append(self.length)
        return step(self, input_ids)

    def sample(cached_decoder: bool) -> GenerationOutput:
        return generate([policy], prompts, cfg, num_samples=2, eos_id=EOS, pad_id=PAD, vocab_size=VOCAB,
                        generator=sampling_generator(3, 0), cached_decoder=cached_decoder)  # fmt: skip

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CachedDecoder, "step", counted)
        fast = sample(True)
    assert steps == list(range(23, 28))  # cache columns 23..27 after the 23-column prefill
    megatron = sample(False)
    assert torch.equal(fast.tokens, megatron.tokens)
    assert torch.equal(fast.response_mask, megatron.response_mask)
    torch.testing.assert_close(fast.logps, megatron.logps, atol=ATOL, rtol=0)
    for row in range(6):
        assert fast.tokens[row, : len(prompts[row // 2])].tolist() == prompts[row // 2]
