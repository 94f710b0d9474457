"""What a generator returns, and the protocol every generator implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

__all__ = ["GenerationOutput", "ResponseGenerator"]


@dataclass
class GenerationOutput:
    """N = B * K sampled sequences, prompt-major (row ``b * K + k`` is prompt ``b``'s ``k``-th sample).

    Every row is ``prompt + response`` starting at position 0, right-padded with ``pad_id``: the layout
    of :class:`~nemo_rpo.data.PreferenceBatch` (position ids ``0..T-1``). A response ends with ``eos``
    unless it was cut at ``max_new_tokens``. To train on it, shift by one as the data layer does:
    ``labels = tokens[:, 1:]``, ``loss_mask = response_mask[:, 1:]``.

    Attributes:
        tokens: ``[N, T]`` long.
        response_mask: ``[N, T]`` float32, 1.0 where ``tokens`` holds a generated token (``eos`` included).
        logps: ``[N, T]`` float32, ``log pi(tokens[:, t] | tokens[:, :t])`` under the policy itself
            (temperature 1, no top-k/top-p filtering: the numbers a teacher-forced forward of ``tokens``
            gives), at generated positions; 0.0 elsewhere.
        prompt_lengths: ``[N]`` long, prompt tokens per row (the response starts there).
        response_lengths: ``[N]`` long, generated tokens per row (``eos`` included).
        num_samples: K.
    """

    tokens: torch.Tensor
    response_mask: torch.Tensor
    logps: torch.Tensor
    prompt_lengths: torch.Tensor
    response_lengths: torch.Tensor
    num_samples: int

    @property
    def num_prompts(self) -> int:
        """B."""
        return self.tokens.shape[0] // self.num_samples

    def response_ids(self) -> list[list[int]]:
        """Each row's generated tokens (``eos`` included when it was generated), for decoding to text."""
        return [
            row[start : start + length].tolist()
            for row, start, length in zip(
                self.tokens, self.prompt_lengths.tolist(), self.response_lengths.tolist()
            )
        ]

    def seq_logps(self) -> torch.Tensor:
        """``[N]`` float32: each response's total log-probability under the policy."""
        return (self.logps * self.response_mask).sum(dim=1)


@runtime_checkable
class ResponseGenerator(Protocol):
    """Samples K responses per prompt from the current policy weights."""

    def generate(
        self, prompt_ids: Sequence[Sequence[int]], num_samples: int, generator: torch.Generator | None
    ) -> GenerationOutput:
        """Sample ``num_samples`` responses for each prompt (token ids, ``bos`` included).

        Collective under model parallelism: every rank of the model-parallel group calls it with the
        same prompts and an identically seeded ``generator``, and every rank gets the same output.
        """
        ...
