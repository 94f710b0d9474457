"""Collation: exact input/label/mask tensors on a hand-written batch, KL rows, fixed padding."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from nemo_rpo.data import PreferenceExample, add_kl_pairs, collate

PAD, EOS = 0, 9


def two_examples() -> list[PreferenceExample]:
    return [
        PreferenceExample(3, [5, 6], [[7, 8, EOS], [10, EOS]], [1.0, 0.0]),
        PreferenceExample(7, [11], [[12, EOS], [EOS]], [0.5, -0.5]),
    ]


def test_labels_and_mask_on_a_hand_written_batch():
    """Row b*K + r; labels = inputs shifted left; mask marks labels that are response tokens (eos included).

    Example 3, response 0: input  5 6 7 8 9 0 0 0   (prompt 5 6, response 7 8 eos)
                           labels 6 7 8 9 0 0 0 0   -> mask 0 1 1 1 0 0 0 0 (labels 7 8 9)
    """
    batch = collate(two_examples(), PAD, pad_to_multiple_of=4)
    assert_close(
        batch.input_ids,
        torch.tensor([
            [5, 6, 7, 8, 9, 0, 0, 0],
            [5, 6, 10, 9, 0, 0, 0, 0],
            [11, 12, 9, 0, 0, 0, 0, 0],
            [11, 9, 0, 0, 0, 0, 0, 0],
        ]),
    )  # fmt: skip
    assert_close(
        batch.labels,
        torch.tensor([
            [6, 7, 8, 9, 0, 0, 0, 0],
            [6, 10, 9, 0, 0, 0, 0, 0],
            [12, 9, 0, 0, 0, 0, 0, 0],
            [9, 0, 0, 0, 0, 0, 0, 0],
        ]),
    )  # fmt: skip
    assert_close(
        batch.loss_mask,
        torch.tensor([
            [0, 1, 1, 1, 0, 0, 0, 0],
            [0, 1, 1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0, 0],
            [1, 0, 0, 0, 0, 0, 0, 0],
        ], dtype=torch.float32),
    )  # fmt: skip
    assert_close(batch.position_ids, torch.arange(8).expand(4, 8))
    assert_close(batch.rewards, torch.tensor([[1.0, 0.0], [0.5, -0.5]]))
    assert_close(batch.index, torch.tensor([3, 7]))
    assert (batch.num_responses, batch.num_sequences_per_prompt, batch.num_prompts) == (2, 2, 2)
    assert not batch.has_kl_pairs
    assert batch.input_ids.dtype == batch.labels.dtype == batch.index.dtype == torch.long
    assert batch.rewards.dtype == batch.loss_mask.dtype == torch.float32


def test_mask_selects_exactly_the_response_tokens_of_the_labels():
    batch = collate(two_examples(), PAD)
    selected = batch.labels[batch.loss_mask.bool()].tolist()
    assert selected == [7, 8, EOS, 10, EOS, 12, EOS, EOS]
    assert batch.input_ids.shape == (4, 8)  # longest 5, rounded up to 8


def test_kl_sequence_is_the_last_row_of_each_prompt():
    batch = collate(add_kl_pairs(two_examples()), PAD)
    assert (batch.num_responses, batch.num_sequences_per_prompt, batch.has_kl_pairs) == (2, 3, True)
    assert batch.input_ids.shape == (6, 8)
    assert batch.input_ids[2].tolist() == [5, 6, 12, EOS, 0, 0, 0, 0]  # prompt 3 + response 0 of example 7
    assert batch.input_ids[5].tolist() == [11, 7, 8, EOS, 0, 0, 0, 0]  # prompt 7 + response 0 of example 3
    assert batch.loss_mask[5].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert batch.rewards.shape == (2, 2)


def test_pad_to_fixes_the_width():
    assert collate(two_examples(), PAD, pad_to=6).input_ids.shape == (4, 6)
    with pytest.raises(ValueError, match="shorter than the longest sequence"):
        collate(two_examples(), PAD, pad_to=4)


def test_no_rewards_gives_none_and_to_moves_tensors():
    examples = [PreferenceExample(0, [1], [[2, EOS], [3, EOS]], None)]
    batch = collate(examples, PAD).to("cpu")
    assert batch.rewards is None
    assert batch.input_ids.device.type == "cpu"


def test_inconsistent_examples_are_rejected():
    mixed_k = [PreferenceExample(0, [1], [[2], [3]], None), PreferenceExample(1, [1], [[2], [3], [4]], None)]
    with pytest.raises(ValueError, match="has 3 responses, expected 2"):
        collate(mixed_k, PAD)
    mixed_rewards = [
        PreferenceExample(0, [1], [[2], [3]], None),
        PreferenceExample(1, [1], [[2], [3]], [1, 0]),
    ]
    with pytest.raises(ValueError, match="rewards"):
        collate(mixed_rewards, PAD)
    with pytest.raises(ValueError, match="at least one"):
        collate([], PAD)
