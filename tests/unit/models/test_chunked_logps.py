"""The chunked LM head + NLL (``model.logps_chunk_size``) gives the whole-logits path's numbers.

:func:`~nemo_rpo.models.logps.chunked_lm_head_nll` never holds the ``[tokens, V]`` logits or their
gradient; its NLL and the gradients of the hidden states and the output weight must equal the output
layer followed by :func:`~nemo_rpo.models.logps.vocab_parallel_nll` (within 1e-5, fp32), with block
sizes that do not divide the token count, and with the vocabulary padding out of the softmax. The TP=2
vocab-parallel case is ``tests/distributed/test_chunked_logps_tp.py``.
"""

from __future__ import annotations

import pytest
import torch

from nemo_rpo.config.schema import ConfigError, ModelConfig, ParallelConfig
from nemo_rpo.distributed.launch import ParallelInfo
from nemo_rpo.models.gpt import build_gpt_model
from nemo_rpo.models.logps import chunked_lm_head_nll, vocab_parallel_nll

ATOL = 1e-5


def _whole(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, real: int) -> torch.Tensor:
    logits = hidden @ weight.t()  # [s, b, V]
    logits = logits.masked_fill(torch.arange(weight.shape[0]) >= real, float("-inf"))
    return vocab_parallel_nll(logits, labels.t()).t()


@pytest.mark.parametrize(("chunk", "real"), [(1, 33), (7, 40), (8, 33), (1000, 33)])
def test_nll_and_gradients_match_the_whole_logits(world1: ParallelInfo, chunk: int, real: int) -> None:
    gen = torch.Generator().manual_seed(chunk)
    seq, batch, hidden_size, vocab = 9, 3, 16, 40
    hidden = torch.randn(seq, batch, hidden_size, generator=gen)
    weight = torch.randn(vocab, hidden_size, generator=gen)
    labels = torch.randint(0, real, (batch, seq), generator=gen)
    upstream = torch.rand(batch, seq, generator=gen)  # a per-token weight, as a masked loss gives

    results = []
    for fn in (
        lambda h, w: _whole(h, w, labels, real),
        lambda h, w: chunked_lm_head_nll(h, w, labels, chunk_size=chunk, real_vocab_size=real),
    ):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        nll = fn(h, w)
        (nll * upstream).sum().backward()
        results.append((nll.detach(), h.grad, w.grad))
    (nll_a, gh_a, gw_a), (nll_b, gh_b, gw_b) = results
    assert nll_b.shape == (batch, seq) and nll_b.dtype == torch.float32
    assert (nll_a > 0).all()
    torch.testing.assert_close(nll_b, nll_a, atol=ATOL, rtol=0)
    torch.testing.assert_close(gh_b, gh_a, atol=ATOL, rtol=0)
    torch.testing.assert_close(gw_b, gw_a, atol=ATOL, rtol=0)
    if real < vocab:  # padding rows: out of the softmax, no gradient
        assert gw_b[real:].abs().max() == 0
    assert gw_b[:real].abs().max() > 0


@pytest.mark.parametrize("untie", [False, True])
def test_model_training_path_matches_whole_logits(world1: ParallelInfo, tiny_config, untie: bool) -> None:
    """The labelled forward of the policy (what ``train_step`` runs), padded vocabulary (100 ids of 128),
    tied and untied output layer, a loss mask whose span skips the first columns: NLL and every
    parameter's gradient equal the whole-logits model's."""
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 100, (4, 13), generator=gen)
    input_ids, labels, positions = ids[:, :-1], ids[:, 1:], torch.arange(12).expand(4, 12)
    loss_mask = torch.zeros(4, 12)
    loss_mask[:, 4:] = 1.0
    upstream = torch.rand(4, 12, generator=gen) * loss_mask
    out = []
    for chunk in (0, 5):
        cfg = tiny_config(
            transformer_impl="local", logps_chunk_size=chunk, untie_embeddings_and_output_weights=untie
        )
        model = build_gpt_model(cfg, ParallelConfig(), 100, init_seed=1)
        calls = []
        model.output_layer.register_forward_hook(lambda *args, calls=calls: calls.append(1))
        nll = model(input_ids, positions, None, labels=labels, loss_mask=loss_mask)
        assert len(calls) == (0 if chunk else 1)  # the chunked path bypasses the whole-logits layer
        (nll * upstream).sum().backward()
        out.append((nll.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (nll_a, grads_a), (nll_b, grads_b) = out
    torch.testing.assert_close(nll_b, nll_a, atol=ATOL, rtol=0)
    assert (nll_b[:, 4:] > 0).all()
    assert sorted(grads_a) == sorted(grads_b)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, atol=ATOL, rtol=0, msg=name)
    head = "output_layer.weight" if untie else "embedding.word_embeddings.weight"
    assert grads_b[head][100:].abs().max() == 0


def test_default_is_chunked_and_negative_size_is_rejected() -> None:
    assert ModelConfig().logps_chunk_size > 0
    with pytest.raises(ConfigError, match="model.logps_chunk_size"):
        ModelConfig(logps_chunk_size=-1)
