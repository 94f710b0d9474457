"""Collation of preference examples into one typed batch of padded token tensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from nemo_rpo.data.preference import PreferenceExample


@dataclass
class PreferenceBatch:
    """B prompts with R sequences each, flattened prompt-major: row ``b * R + r``.

    Rows ``r < K`` are the K responses (best first); with KTO's KL pairs, row ``r = K`` is the
    mismatched sequence. ``labels[t]`` is the token that follows ``input_ids[t]``, so a model's
    token log-probs of ``labels`` summed under ``loss_mask`` are the sequence log-probs of the
    responses (their ``eos`` included, prompt and padding excluded).

    Attributes:
        input_ids: ``[B*R, T]`` long, right-padded with ``pad_id``.
        labels: ``[B*R, T]`` long, ``input_ids`` shifted left by one, ``pad_id`` in the last column.
        loss_mask: ``[B*R, T]`` float32, 1.0 where ``labels`` holds a response token.
        position_ids: ``[B*R, T]`` long, ``0..T-1`` on every row.
        rewards: ``[B, K]`` float32, or None when the data has no rewards.
        index: ``[B]`` long, the examples' dataset rows.
        num_responses: K.
        num_sequences_per_prompt: R (K, or K + 1 with KL pairs).
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor
    position_ids: torch.Tensor
    rewards: torch.Tensor | None
    index: torch.Tensor
    num_responses: int
    num_sequences_per_prompt: int

    @property
    def num_prompts(self) -> int:
        """B."""
        return self.index.shape[0]

    @property
    def has_kl_pairs(self) -> bool:
        """Whether each prompt's last row is a KTO mismatched sequence."""
        return self.num_sequences_per_prompt > self.num_responses

    def to(self, device: torch.device | str) -> PreferenceBatch:
        """A copy with every tensor on ``device``."""
        return PreferenceBatch(
            input_ids=self.input_ids.to(device),
            labels=self.labels.to(device),
            loss_mask=self.loss_mask.to(device),
            position_ids=self.position_ids.to(device),
            rewards=None if self.rewards is None else self.rewards.to(device),
            index=self.index.to(device),
            num_responses=self.num_responses,
            num_sequences_per_prompt=self.num_sequences_per_prompt,
        )


def collate(
    examples: Sequence[PreferenceExample],
    pad_id: int,
    pad_to_multiple_of: int = 8,
    pad_to: int | None = None,
) -> PreferenceBatch:
    """Stack examples into a :class:`PreferenceBatch`.

    Args:
        examples: B examples with the same K; all with KL pairs or none.
        pad_id: Padding token.
        pad_to_multiple_of: T is the longest sequence rounded up to this multiple.
        pad_to: A fixed T instead (e.g. the same shape for every micro-batch); must fit every sequence.

    Raises:
        ValueError: Empty input, mixed K, mixed rewards / KL presence, or ``pad_to`` too short.
    """
    if not examples:
        raise ValueError("collate needs at least one example")
    k = len(examples[0].response_ids)
    with_kl = examples[0].kl_response_ids is not None
    with_rewards = examples[0].rewards is not None
    for ex in examples:
        if len(ex.response_ids) != k:
            raise ValueError(f"example {ex.index} has {len(ex.response_ids)} responses, expected {k}")
        if (ex.kl_response_ids is not None) != with_kl or (ex.rewards is not None) != with_rewards:
            raise ValueError(f"example {ex.index}: all examples must have KL pairs and rewards, or none")

    # (prompt length, full sequence) per row, prompt-major.
    rows = [
        (len(ex.prompt_ids), ex.prompt_ids + response)
        for ex in examples
        for response in [*ex.response_ids, *([ex.kl_response_ids] if with_kl else [])]
    ]
    longest = max(len(seq) for _, seq in rows)
    if pad_to is None:
        width = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    elif pad_to < longest:
        raise ValueError(f"pad_to={pad_to} is shorter than the longest sequence ({longest} tokens)")
    else:
        width = pad_to

    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width), dtype=torch.float32)
    for row, (prompt_len, seq) in enumerate(rows):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        # labels[t] = seq[t + 1]: response tokens seq[prompt_len:] are labels at prompt_len - 1 .. len - 2.
        loss_mask[row, prompt_len - 1 : len(seq) - 1] = 1.0
    labels = torch.cat([input_ids[:, 1:], torch.full((len(rows), 1), pad_id, dtype=torch.long)], dim=1)
    position_ids = torch.arange(width, dtype=torch.long).expand(len(rows), width).contiguous()
    rewards = torch.tensor([ex.rewards for ex in examples], dtype=torch.float32) if with_rewards else None
    return PreferenceBatch(
        input_ids=input_ids,
        labels=labels,
        loss_mask=loss_mask,
        position_ids=position_ids,
        rewards=rewards,
        index=torch.tensor([ex.index for ex in examples], dtype=torch.long),
        num_responses=k,
        num_sequences_per_prompt=k + int(with_kl),
    )
