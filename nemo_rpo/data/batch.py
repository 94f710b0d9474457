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
        attention_layout: ``None``, or (``share_prompt``) ``[B*R, T]`` long: the batch is then packed
            (see :func:`collate`): ``input_ids``/``position_ids`` are ``[B, W]``, one row per prompt
            holding the prompt once and its R sequences after it, and ``attention_layout[b * R + r, t]``
            says where position ``t`` of sequence ``(b, r)`` sits in the packed ``[W, B]`` activations:
            flat index ``i = w * B + b`` stored as ``i`` where that sequence's position produces the
            packed output (its own response, and the prompt for ``r = 0``), else as ``-1 - i``.
            ``labels`` and ``loss_mask`` keep the unpacked ``[B*R, T]`` sequence coordinates.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor
    position_ids: torch.Tensor
    rewards: torch.Tensor | None
    index: torch.Tensor
    num_responses: int
    num_sequences_per_prompt: int
    attention_layout: torch.Tensor | None = None

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
            attention_layout=None if self.attention_layout is None else self.attention_layout.to(device),
        )


def packed_length(example: PreferenceExample) -> int:
    """Tokens of ``example`` with its prompt held once: the prompt, then every sequence's response."""
    return len(example.prompt_ids) + sum(map(len, example.sequence_responses))


PAD_MULTIPLE = 8  # batch widths are rounded up to this many tokens


def round_up(length: int, multiple: int = PAD_MULTIPLE) -> int:
    """``length`` rounded up to a multiple of ``multiple``: the padded width of a batch."""
    return -(-length // multiple) * multiple


def _padded_width(longest: int, multiple: int, fixed: int | None, name: str, what: str) -> int:
    """``longest`` rounded up to ``multiple``, or ``fixed`` when given (a ValueError if it is too short)."""
    if fixed is None:
        return round_up(longest, multiple)
    if fixed < longest:
        raise ValueError(f"{name}={fixed} is shorter than the longest {what} ({longest} tokens)")
    return fixed


def collate(
    examples: Sequence[PreferenceExample],
    pad_id: int,
    pad_to_multiple_of: int = PAD_MULTIPLE,
    pad_to: int | None = None,
    *,
    share_prompt: bool = False,
    pack_to: int | None = None,
) -> PreferenceBatch:
    """Stack examples into a :class:`PreferenceBatch`.

    Args:
        examples: B examples with the same K; all with KL pairs or none.
        pad_id: Padding token.
        pad_to_multiple_of: T is the longest sequence rounded up to this multiple.
        pad_to: A fixed T instead (e.g. the same shape for every micro-batch); must fit every sequence.
        share_prompt: pack each prompt once with its R responses after it (``[B, W]`` model inputs, W
            the longest :func:`packed_length` rounded up like T) and describe the R sequences in
            ``attention_layout``; the model then computes every prompt token once instead of R times.
        pack_to: A fixed W instead; must fit every packed row.

    Raises:
        ValueError: Empty input, mixed K, mixed rewards / KL presence, or ``pad_to``/``pack_to`` too short.
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
        for response in ex.sequence_responses
    ]
    width = _padded_width(max(len(seq) for _, seq in rows), pad_to_multiple_of, pad_to, "pad_to", "sequence")

    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width), dtype=torch.float32)
    for row, (prompt_len, seq) in enumerate(rows):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        # labels[t] = seq[t + 1]: response tokens seq[prompt_len:] are labels at prompt_len - 1 .. len - 2.
        loss_mask[row, prompt_len - 1 : len(seq) - 1] = 1.0
    labels = torch.cat([input_ids[:, 1:], torch.full((len(rows), 1), pad_id, dtype=torch.long)], dim=1)
    position_ids = torch.arange(width, dtype=torch.long).expand(len(rows), width).contiguous()
    rewards = torch.tensor([ex.rewards for ex in examples], dtype=torch.float32) if with_rewards else None
    layout = None
    if share_prompt:
        packed_width = _padded_width(max(map(packed_length, examples)), pad_to_multiple_of, pack_to, "pack_to",
                                     "packed row")  # fmt: skip
        input_ids, position_ids, layout = _pack(examples, pad_id, width, packed_width)
    return PreferenceBatch(
        input_ids=input_ids,
        labels=labels,
        loss_mask=loss_mask,
        position_ids=position_ids,
        rewards=rewards,
        index=torch.tensor([ex.index for ex in examples], dtype=torch.long),
        num_responses=k,
        num_sequences_per_prompt=k + int(with_kl),
        attention_layout=layout,
    )


def _pack(
    examples: Sequence[PreferenceExample], pad_id: int, width: int, packed_width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``position_ids`` ``[B, W]`` with each prompt once, and the ``[B*R, T]`` layout.

    Row ``b`` is ``prompt, response_0, ..., response_{R-1}, padding``; response ``r`` keeps the positions
    it has in its own sequence (``p .. p + len - 1``), so rotary or learned position embeddings see the
    same positions as unpacked. Sequence ``(b, r)`` reads the prompt and response ``r`` from the packed row,
    and its padding from the row's first token (padding is only ever attended by padding).
    """
    num_prompts = len(examples)
    # Built as Python lists and converted once: a few small torch ops per sequence cost more than the
    # step's model work on small models.
    tokens, positions, columns, owners, prompt_of_row = [], [], [], [], []
    for b, ex in enumerate(examples):
        p = len(ex.prompt_ids)
        row_tokens, row_positions = list(ex.prompt_ids), list(range(p))
        for r, response in enumerate(ex.sequence_responses):
            n, offset = len(response), len(row_tokens)
            # packed column of each sequence position: prompt, this response, then column 0 for padding
            columns.append([*range(p), *range(offset, offset + n), *[0] * (width - p - n)])
            owners.append([r == 0] * p + [True] * n + [False] * (width - p - n))
            prompt_of_row.append(b)
            row_tokens += response
            row_positions += range(p, p + n)
        pad = packed_width - len(row_tokens)
        tokens.append(row_tokens + [pad_id] * pad)
        positions.append(row_positions + [0] * pad)
    flat = torch.tensor(columns, dtype=torch.long) * num_prompts + torch.tensor(prompt_of_row).unsqueeze(1)
    layout = torch.where(torch.tensor(owners), flat, -1 - flat)
    return torch.tensor(tokens, dtype=torch.long), torch.tensor(positions, dtype=torch.long), layout
