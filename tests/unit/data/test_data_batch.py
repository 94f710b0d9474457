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


def test_share_prompt_packs_each_prompt_once_on_a_hand_written_batch():
    """Each prompt once, then its responses; responses keep their own positions; the layout maps back.

    Example 3 packs to  5 6 | 7 8 9 | 10 9 | 0   positions 0 1 | 2 3 4 | 2 3 | 0
    Example 7 packs to  11 | 12 9 | 9 | 0 0 0 0  positions 0 | 1 2 | 1 | 0 0 0 0
    Packed activations are [W, B]: column w of prompt b is flat index w * 2 + b. Sequence (3, response 1)
    reads columns 0 1 (the prompt, owned by response 0: stored as -1 - index) then 5 6 (its own).
    """
    plain = collate(two_examples(), PAD, pad_to_multiple_of=4)
    packed = collate(two_examples(), PAD, pad_to_multiple_of=4, share_prompt=True)
    assert_close(packed.input_ids, torch.tensor([[5, 6, 7, 8, 9, 10, 9, 0], [11, 12, 9, 9, 0, 0, 0, 0]]))
    assert_close(packed.position_ids, torch.tensor([[0, 1, 2, 3, 4, 2, 3, 0], [0, 1, 2, 1, 0, 0, 0, 0]]))
    assert_close(
        packed.attention_layout,
        torch.tensor([
            [0, 2, 4, 6, 8, -1, -1, -1],
            [-1, -3, 10, 12, -1, -1, -1, -1],
            [1, 3, 5, -2, -2, -2, -2, -2],
            [-2, 7, -2, -2, -2, -2, -2, -2],
        ]),
    )  # fmt: skip
    # The loss sees the unpacked sequences: same labels and mask.
    assert_close(packed.labels, plain.labels)
    assert_close(packed.loss_mask, plain.loss_mask)
    # Every real sequence token reads the packed token it is.
    layout = packed.attention_layout
    sources = torch.where(layout >= 0, layout, -1 - layout)
    gathered = packed.input_ids.t().reshape(-1)[sources]
    real = plain.input_ids != PAD
    assert_close(gathered[real], plain.input_ids[real])
    assert plain.attention_layout is None


def test_share_prompt_with_kl_rows_and_pack_to():
    exs = [
        PreferenceExample(0, [5, 6], [[7, EOS], [8, EOS]], [1.0, 0.0], kl_response_ids=[12, EOS]),
        PreferenceExample(1, [11], [[7, EOS], [EOS]], [1.0, 0.0], kl_response_ids=[8, 8, EOS]),
    ]
    packed = collate(exs, PAD, share_prompt=True, pack_to=16)
    assert packed.input_ids.shape == (2, 16) and packed.attention_layout.shape == (6, 8)
    assert packed.input_ids[0, :8].tolist() == [5, 6, 7, EOS, 8, EOS, 12, EOS]
    assert packed.position_ids[0, :8].tolist() == [0, 1, 2, 3, 2, 3, 2, 3]
    with pytest.raises(ValueError, match="pack_to=7 is shorter than the longest packed row \\(8 tokens\\)"):
        collate(exs, PAD, share_prompt=True, pack_to=7)
