"""The reward model's head, its last-token read-out, and the Bradley-Terry / regression objectives."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from nemo_rpo.config.schema import ModelConfig, ParallelConfig
from nemo_rpo.data.batch import collate
from nemo_rpo.data.preference import PreferenceExample
from nemo_rpo.distributed.launch import ParallelInfo
from nemo_rpo.losses.reward_model import bradley_terry_loss, preference_pairs, regression_loss
from nemo_rpo.models.reward import GPTRewardModel, build_reward_model, sequence_lengths
from nemo_rpo.training.reward_model import rm_losses

TinyConfig = Callable[..., ModelConfig]
VOCAB = 259  # the byte tokenizer's


@pytest.fixture(scope="module")
def rm(world1: ParallelInfo, tiny_config: TinyConfig) -> GPTRewardModel:
    model = build_reward_model(tiny_config(), ParallelConfig(), VOCAB, init_seed=7)
    return model.eval()


def _score(model: GPTRewardModel, rows: list[list[int]], width: int, pad: int = 256) -> torch.Tensor:
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    positions = torch.arange(width).expand(len(rows), width)
    lengths = torch.tensor([len(r) for r in rows])
    with torch.no_grad():
        return model(ids, positions, None, sequence_lengths=lengths)


def test_score_reads_the_last_real_token_and_ignores_padding(rm: GPTRewardModel) -> None:
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, 256, (n,), generator=gen).tolist() for n in (5, 9, 12)]
    tight = _score(rm, rows, width=12)
    assert tight.shape == (3,) and tight.dtype == torch.float32
    torch.testing.assert_close(_score(rm, rows, width=16), tight)  # appended padding
    torch.testing.assert_close(_score(rm, rows, width=16, pad=42), tight)  # any token after the end
    for i, row in enumerate(rows):  # each sequence alone, unpadded
        torch.testing.assert_close(_score(rm, [row], width=len(row)), tight[i : i + 1])
    # Different sequences get different scores (the head is not degenerate).
    assert tight.std() > 1e-3


def test_head_is_linear_on_the_final_hidden_state(rm: GPTRewardModel) -> None:
    assert tuple(rm.rm_head.weight.shape) == (1, 32) and float(rm.rm_head.bias.detach()) == 0.0
    keys = set(rm.sharded_state_dict())
    assert {"rm_head.weight", "rm_head.bias", "decoder.final_layernorm.weight"} <= keys
    assert not any(k.startswith("output_layer") for k in keys)  # no vocabulary projection
    rows = [[1, 2, 3, 4]]
    with torch.no_grad():
        rm.rm_head.bias.fill_(0.5)
        shifted = _score(rm, rows, width=8)
        rm.rm_head.bias.zero_()
    torch.testing.assert_close(shifted - 0.5, _score(rm, rows, width=8))


def test_init_seed_draws_the_head_too(
    world1: ParallelInfo, tiny_config: TinyConfig, rm: GPTRewardModel
) -> None:
    same = build_reward_model(tiny_config(), ParallelConfig(), VOCAB, init_seed=7)
    other = build_reward_model(tiny_config(), ParallelConfig(), VOCAB, init_seed=8)
    torch.testing.assert_close(same.rm_head.weight, rm.rm_head.weight, atol=0, rtol=0)
    assert not torch.equal(other.rm_head.weight, rm.rm_head.weight)
    assert 0.01 < float(rm.rm_head.weight.std()) < 0.04  # normal(0, init_method_std=0.02)


def test_sequence_lengths_from_a_collated_batch() -> None:
    examples = [
        PreferenceExample(0, [257, 10, 11], [[20, 258], [21, 22, 23, 258]], None),
        PreferenceExample(1, [257, 12], [[24, 25, 258], [258]], None),
    ]
    batch = collate(examples, pad_id=256, pad_to=16)
    assert sequence_lengths(batch.loss_mask).tolist() == [5, 7, 5, 3]


def test_bradley_terry_hand_worked() -> None:
    """scores (2, 0, 1), rewards (1, .2, .5): pairs 0>1 (margin 2), 0>2 (1), 2>1 (1).

    loss = log(1 + e^-2) + 2 log(1 + e^-1) = 0.126928 + 2 * 0.313262 = 0.753452.
    d/ds0 = -sig(-2) - sig(-1) = -0.388144; d/ds1 = +0.388144; d/ds2 = sig(-1) - sig(-1) = 0.
    """
    scores = torch.tensor([[2.0, 0.0, 1.0]], requires_grad=True)
    loss, stats = bradley_terry_loss(scores=scores, rewards=torch.tensor([[1.0, 0.2, 0.5]]))
    torch.testing.assert_close(loss, torch.tensor(math.log1p(math.exp(-2)) + 2 * math.log1p(math.exp(-1))))
    torch.testing.assert_close(loss, torch.tensor(0.753452), atol=1e-6, rtol=0)
    loss.backward()
    s2, s1 = 1 / (1 + math.exp(2)), 1 / (1 + math.exp(1))
    torch.testing.assert_close(scores.grad, torch.tensor([[-(s2 + s1), s2 + s1, 0.0]]))
    assert (stats["num_pairs"].item(), stats["num_correct"].item()) == (3, 3)


def test_bradley_terry_ties_and_data_order() -> None:
    """Tied rewards give no pair; without rewards response 0 beats response 1 (trl's chosen first)."""
    pairs = preference_pairs(rewards=torch.tensor([[0.5, 0.5, 0.1]]), num_prompts=1, k=3)
    assert pairs.tolist() == [[[False, False, True], [False, False, True], [False, False, False]]]
    scores = torch.tensor([[0.5, 1.5], [3.0, 3.0]])
    loss, stats = bradley_terry_loss(scores=scores, rewards=None)
    # softplus(1) for the wrongly ordered pair + log 2 for the tie (a tie is not counted correct).
    torch.testing.assert_close(loss, torch.tensor(math.log1p(math.e) + math.log(2.0)))
    assert (stats["num_pairs"].item(), stats["num_correct"].item()) == (2, 0)


def test_regression_hand_worked() -> None:
    """scores (1, 0) vs rewards (.5, .5): sum of squares .25 + .25 = .5, gradient 2 (s - r) = (1, -1)."""
    scores = torch.tensor([[1.0, 0.0]], requires_grad=True)
    loss, stats = regression_loss(scores=scores, rewards=torch.tensor([[0.5, 0.5]]))
    torch.testing.assert_close(loss, torch.tensor(0.5))
    loss.backward()
    torch.testing.assert_close(scores.grad, torch.tensor([[1.0, -1.0]]))
    assert stats["num_responses"].item() == 2 and stats["num_pairs"].item() == 0


@pytest.mark.parametrize(("objective", "count"), [("bradley_terry", 5), ("regression", 6)])
def test_rm_losses_sum_over_prompts_and_report(objective: str, count: int) -> None:
    """Two prompts, K = 3: rewards (1, .5, .5) and (0, 1, .5) give 2 + 3 = 5 pairs, 6 responses."""
    examples = [
        PreferenceExample(0, [257, 1], [[2, 258], [3, 258], [4, 258]], [1.0, 0.5, 0.5]),
        PreferenceExample(1, [257, 5], [[6, 258], [7, 258], [8, 8, 258]], [0.0, 1.0, 0.5]),
    ]
    batch = collate(examples, pad_id=256)
    scores = torch.tensor([1.0, 0.0, 0.0, 0.2, 0.1, 0.3])
    loss_sum, num, report = rm_losses(scores=scores, batch=batch, objective=objective)
    assert num.item() == count
    grid = scores.view(2, 3)
    expected = (
        sum(bradley_terry_loss(scores=grid[i : i + 1], rewards=batch.rewards[i : i + 1])[0] for i in range(2))
        if objective == "bradley_terry"
        else ((grid - batch.rewards) ** 2).sum()
    )
    torch.testing.assert_close(loss_sum, expected)
    # correct pairs: prompt 0: 0>1 yes, 0>2 yes; prompt 1: 1>0 no (.1 < .2), 1>2 no, 2>0 yes.
    assert report[2].item() == 3 and report[3].item() == 5
    assert report[6].item() == 6 and report[7].item() == 4 + 4 + 4 + 4 + 4 + 5
