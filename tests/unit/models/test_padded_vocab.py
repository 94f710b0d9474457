"""The vocabulary padding stays out of the softmax (``PolicyGPTModel.mask_padded_vocab``).

A tokenizer of 100 ids is padded to 128 embedding rows. The policy is the distribution over the 100
real ids: the padding columns of the logits are ``-inf``, the per-token NLL of the training path equals
``-log_softmax`` over the first 100 columns alone, and the padding rows of the (tied) embedding get no
gradient. Found by the learning reference (``benchmarks/learning_reference``): with the padding in the
softmax, nemo-rpo trained a different distribution from the one it sampled and exported.
"""

from __future__ import annotations

import torch

from nemo_rpo.config.schema import ParallelConfig
from nemo_rpo.distributed.launch import ParallelInfo
from nemo_rpo.models.gpt import build_gpt_model

VOCAB = 100


def _batch(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, VOCAB, (3, 12), generator=gen)
    return ids[:, :-1], torch.arange(11).expand(3, 11), ids[:, 1:]


def test_padding_logits_are_minus_inf_and_the_nll_ignores_them(world1: ParallelInfo, tiny_config) -> None:
    model = build_gpt_model(tiny_config(transformer_impl="local"), ParallelConfig(), VOCAB, init_seed=1)
    input_ids, positions, labels = _batch(torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(input_ids, positions, None)
        nll = model(input_ids, positions, None, labels=labels)
    assert logits.shape[-1] == 128
    assert torch.isneginf(logits[..., VOCAB:]).all() and torch.isfinite(logits[..., :VOCAB]).all()
    expected = (
        -torch.log_softmax(logits[..., :VOCAB].float(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    )
    torch.testing.assert_close(nll, expected)


def test_padding_rows_get_no_gradient(world1: ParallelInfo, tiny_config) -> None:
    model = build_gpt_model(tiny_config(transformer_impl="local"), ParallelConfig(), VOCAB, init_seed=1)
    input_ids, positions, labels = _batch(torch.Generator().manual_seed(1))
    model(input_ids, positions, None, labels=labels).sum().backward()
    grad = model.embedding.word_embeddings.weight.grad
    assert grad[VOCAB:].abs().max() == 0
    assert grad[:VOCAB].abs().max() > 0


def test_an_unpadded_vocabulary_is_left_alone(world1: ParallelInfo, tiny_config) -> None:
    model = build_gpt_model(tiny_config(transformer_impl="local"), ParallelConfig(), 128, init_seed=1)
    input_ids, positions, _ = _batch(torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = model(input_ids, positions, None)
    assert torch.isfinite(logits).all() and not model.output_layer._forward_hooks
