"""A packed batch (each prompt once, ``model.share_prompt``) gives the unpacked token NLL and gradients."""

from __future__ import annotations

import random

import pytest
import torch

from nemo_rpo.config.schema import ConfigError, ModelConfig, ParallelConfig
from nemo_rpo.data.batch import collate
from nemo_rpo.data.preference import PreferenceExample
from nemo_rpo.distributed.launch import ParallelInfo
from nemo_rpo.models.gpt import build_gpt_model, shares_prompt
from nemo_rpo.models.shared_prompt import to_packed, to_sequences

VOCAB = 100


def _examples(seed: int, k: int, kl: bool) -> list[PreferenceExample]:
    """Prompts of 1-9 tokens, responses of 1-12: uneven rows, so padding sits everywhere."""
    rng = random.Random(seed)

    def ids(n: int) -> list[int]:
        return [rng.randrange(1, VOCAB) for _ in range(n)]

    return [
        PreferenceExample(
            i,
            ids(rng.randint(1, 9)),
            [ids(rng.randint(1, 12)) for _ in range(k)],
            [rng.random() for _ in range(k)],
            ids(5) if kl else None,
        )  # fmt: skip
        for i in range(3)
    ]


def _nll_and_grads(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # noqa: ANN001
    model.zero_grad()
    nll = model(batch.input_ids, batch.position_ids, batch.attention_layout, labels=batch.labels,
                loss_mask=batch.loss_mask)  # fmt: skip
    weights = torch.randn(nll.shape, generator=torch.Generator().manual_seed(1))
    (nll * batch.loss_mask * weights).sum().backward()
    return (nll * batch.loss_mask).detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    ("overrides", "k", "kl"),
    [
        ({"num_query_groups": 2}, 3, False),  # RoPE, GQA
        ({}, 2, True),  # KTO's mismatched sequence as a third row per prompt
        ({"position_embedding_type": "learned_absolute", "normalization": "LayerNorm"}, 4, False),
        ({"recompute_granularity": "full"}, 2, False),  # the layout survives recomputation
    ],
    ids=["rope-gqa", "kl-rows", "learned-positions", "recompute"],
)
def test_packed_batch_gives_unpacked_nll_and_grads(
    world1: ParallelInfo, tiny_config, overrides, k, kl
) -> None:
    model = build_gpt_model(tiny_config(max_seq_len=64, **overrides), ParallelConfig(), VOCAB, init_seed=3)
    examples = _examples(seed=len(overrides) + k, k=k, kl=kl)
    plain = collate(examples, pad_id=0)
    packed = collate(examples, pad_id=0, share_prompt=True)
    assert packed.input_ids.numel() < plain.input_ids.numel()  # the point: fewer tokens through the model
    want, want_grads = _nll_and_grads(model, plain)
    got, got_grads = _nll_and_grads(model, packed)
    assert want.shape == got.shape == plain.labels.shape
    assert (want[plain.loss_mask > 0] > 0).all()  # real NLLs on every response token
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert sorted(got_grads) == sorted(want_grads)
    for name, grad in want_grads.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(got_grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)


def test_to_sequences_and_to_packed_round_trip() -> None:
    """Gather sequences from packed rows and back: owned positions return, unowned packed ones are zero."""
    layout = torch.tensor([[0, 2, -1], [-1, 4, -1]])  # B=2: packed flat index w * 2 + b
    packed = torch.arange(1.0, 7.0).view(3, 2, 1)  # [W=3, B=2, 1]: flat index i holds i + 1
    seqs = to_sequences(packed, layout)
    assert seqs.squeeze(-1).tolist() == [[1.0, 3.0, 1.0], [1.0, 5.0, 1.0]]
    back = to_packed(seqs, layout, (3, 2)).squeeze(-1)
    assert back.tolist() == [[1.0, 0.0], [3.0, 0.0], [5.0, 0.0]]


def test_share_prompt_resolution_and_errors(world1: ParallelInfo) -> None:
    assert shares_prompt(ModelConfig(transformer_impl="local")) is True
    assert shares_prompt(ModelConfig(transformer_impl="local", core_attention="megatron")) is False
    assert shares_prompt(ModelConfig(transformer_impl="local", share_prompt=False)) is False
    with pytest.raises(
        ConfigError, match="model.share_prompt: needs the local spec with core_attention=sdpa"
    ):
        ModelConfig(core_attention="megatron", share_prompt=True)
