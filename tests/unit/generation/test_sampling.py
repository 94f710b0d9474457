"""Token selection: hand-worked inverse-CDF draws, top-k / top-p filters, greedy, padding rows."""

from __future__ import annotations

import math

import torch

from nemo_rpo.config.schema import GenerationConfig
from nemo_rpo.generation.sampling import draw_uniforms, filter_logits, sampling_generator, select_tokens

PROBS = torch.tensor([[0.5, 0.3, 0.2]])


def test_inverse_cdf_draws() -> None:
    """p = (0.5, 0.3, 0.2): CDF (0.5, 0.8, 1.0), so u = 0.1 -> 0, 0.6 -> 1, 0.85 -> 2, 0.5 -> 1 (right edge)."""
    logits = PROBS.log().expand(4, 3)
    tokens, logps = select_tokens(logits, torch.tensor([0.1, 0.6, 0.85, 0.5], dtype=torch.float64),
                                  GenerationConfig(), vocab_size=3)  # fmt: skip
    assert tokens.tolist() == [0, 1, 2, 1]
    torch.testing.assert_close(logps, torch.tensor([0.5, 0.3, 0.2, 0.3]).log())


def test_top_p_keeps_the_nucleus_and_renormalises() -> None:
    """top_p = 0.7: 0.5 and 0.5 + 0.3 >= 0.7 -> keep {0, 1}, renormalised to (0.625, 0.375)."""
    probs = torch.softmax(filter_logits(PROBS.log(), GenerationConfig(top_p=0.7)), dim=-1)
    torch.testing.assert_close(probs, torch.tensor([[0.625, 0.375, 0.0]]))
    # u = 0.7 lands in token 1's slice (0.625, 1.0]; the log-prob reported is still the policy's log 0.3.
    tokens, logps = select_tokens(PROBS.log(), torch.tensor([0.7], dtype=torch.float64),
                                  GenerationConfig(top_p=0.7), vocab_size=3)  # fmt: skip
    assert tokens.tolist() == [1]
    torch.testing.assert_close(logps, torch.tensor([math.log(0.3)]))


def test_top_k_and_temperature() -> None:
    """top_k = 2 drops 0.2; temperature 0.5 squares the probabilities: (0.25, 0.09) / 0.34."""
    probs = torch.softmax(filter_logits(PROBS.log(), GenerationConfig(top_k=2, temperature=0.5)), dim=-1)
    torch.testing.assert_close(probs, torch.tensor([[0.25 / 0.34, 0.09 / 0.34, 0.0]]))


def test_greedy_is_argmax_and_draws_nothing() -> None:
    cfg = GenerationConfig(temperature=0.0)
    gen = sampling_generator(0, 0)
    assert draw_uniforms(gen, 4, cfg) is None
    assert torch.equal(gen.get_state(), sampling_generator(0, 0).get_state())
    tokens, _ = select_tokens(torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]]), None, cfg, vocab_size=3)
    assert tokens.tolist() == [1, 0]


def test_padding_rows_are_never_sampled_but_count_in_the_normaliser() -> None:
    # Vocabulary 2, padded to 4; the padding rows hold most of the mass.
    logits = torch.tensor([[0.0, 0.0, 5.0, 5.0]])
    for u in (0.0, 0.49, 0.5, 0.999999):
        tokens, logps = select_tokens(logits, torch.tensor([u], dtype=torch.float64), GenerationConfig(),
                                      vocab_size=2)  # fmt: skip
        assert tokens.item() == (0 if u < 0.5 else 1)
        torch.testing.assert_close(logps, torch.log_softmax(logits, -1)[:, tokens.item()])
    greedy, _ = select_tokens(logits, None, GenerationConfig(temperature=0.0), vocab_size=2)
    assert greedy.item() == 0


def test_sampling_generator_is_a_function_of_seed_and_step() -> None:
    cfg = GenerationConfig()
    draw = lambda seed, step: draw_uniforms(sampling_generator(seed, step), 3, cfg)  # noqa: E731
    assert torch.equal(draw(1, 2), draw(1, 2))
    assert not torch.equal(draw(1, 2), draw(1, 3))
    assert not torch.equal(draw(1, 2), draw(2, 2))
