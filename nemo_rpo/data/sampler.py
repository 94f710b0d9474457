"""Which dataset rows each data-parallel rank sees at each step: a pure function of the step.

Epoch ``e`` visits the rows in a permutation seeded by ``(seed, e)``; step ``s`` takes global batch
``s mod steps_per_epoch`` of epoch ``s // steps_per_epoch`` and an incomplete last batch is
dropped. Rank ``d`` takes the ``d``-th contiguous slice of ``global_batch_size / dp_size`` rows.
Resuming at step ``s`` therefore needs nothing saved but ``s``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nemo_rpo.data.errors import DataError


class GlobalBatchSampler:
    """Deterministic global batches, sliced per data-parallel rank."""

    def __init__(
        self,
        num_examples: int,
        global_batch_size: int,
        dp_rank: int = 0,
        dp_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        source: str = "<dataset>",
        micro_batch_size: int | None = None,
    ) -> None:
        """Check the sizes.

        Args:
            num_examples: Dataset rows.
            global_batch_size: Prompts per optimizer step over all data-parallel ranks.
            dp_rank: This rank, ``0 <= dp_rank < dp_size``.
            dp_size: Data-parallel ranks; must divide ``global_batch_size``.
            seed: Seed of the per-epoch permutations.
            shuffle: False visits rows in order every epoch.
            source: The dataset's file, named in errors.
            micro_batch_size: ``trainer.micro_batch_size``; when given, a dataset smaller than one global
                batch gets batch sizes that fit it in its error message.

        Raises:
            DataError: The dataset is smaller than one global batch.
            ValueError: Bad batch size or rank.
        """
        if dp_size < 1 or not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank={dp_rank} must be in [0, dp_size={dp_size})")
        if global_batch_size < 1 or global_batch_size % dp_size:
            raise ValueError(
                f"global_batch_size={global_batch_size} must be a positive multiple of dp_size={dp_size}"
            )
        if num_examples < global_batch_size:
            raise DataError(source, None, "trainer.global_batch_size",
                            f"{global_batch_size} is more than the {num_examples} examples in the dataset"
                            + _fitting_sizes(num_examples, dp_size, micro_batch_size))  # fmt: skip
        self.num_examples = num_examples
        self.global_batch_size = global_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.seed = seed
        self.shuffle = shuffle
        self.local_batch_size = global_batch_size // dp_size
        self.steps_per_epoch = num_examples // global_batch_size
        self._epoch: int | None = None  # memo of the last epoch's order; results never depend on it
        self._order: list[int] = []

    def epoch_of(self, step: int) -> int:
        """The epoch that ``step`` (0-based) falls in."""
        return step // self.steps_per_epoch

    def epoch_order(self, epoch: int) -> list[int]:
        """Every row once, in the order epoch ``epoch`` visits them."""
        if epoch != self._epoch:
            if self.shuffle:
                rng = np.random.default_rng([self.seed % 2**64, epoch])
                self._order = rng.permutation(self.num_examples).tolist()
            else:
                self._order = list(range(self.num_examples))
            self._epoch = epoch
        return self._order

    def global_indices_for_step(self, step: int) -> list[int]:
        """All ``global_batch_size`` rows of step ``step``, every rank's slice in rank order."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        start = (step % self.steps_per_epoch) * self.global_batch_size
        return self.epoch_order(self.epoch_of(step))[start : start + self.global_batch_size]

    def indices_for_step(self, step: int) -> list[int]:
        """This rank's ``global_batch_size / dp_size`` rows of step ``step``."""
        start = self.dp_rank * self.local_batch_size
        return self.global_indices_for_step(step)[start : start + self.local_batch_size]


def _fitting_sizes(num_examples: int, dp_size: int, micro_batch_size: int | None) -> str:
    """``; set trainer.global_batch_size=G [trainer.micro_batch_size=M]``: the largest batch that fits."""
    if micro_batch_size is None:
        return ""
    if num_examples < dp_size:
        return f" (each of the {dp_size} data-parallel ranks needs at least one)"
    unit = micro_batch_size * dp_size
    if num_examples >= unit:  # keep the micro-batch size, take whole micro-batches on every rank
        return f"; set trainer.global_batch_size={num_examples - num_examples % unit}"
    local = num_examples // dp_size  # less than one micro-batch per rank: one smaller micro-batch each
    return f"; set trainer.global_batch_size={local * dp_size} trainer.micro_batch_size={local}"


def split_micro_batches(indices: Sequence[int], micro_batch_size: int) -> list[list[int]]:
    """Split a rank's rows into consecutive micro-batches of ``micro_batch_size``.

    Raises:
        ValueError: ``micro_batch_size`` does not divide ``len(indices)``.
    """
    if micro_batch_size < 1 or len(indices) % micro_batch_size:
        raise ValueError(
            f"micro_batch_size={micro_batch_size} must divide the {len(indices)} rows of this rank"
        )
    return [list(indices[i : i + micro_batch_size]) for i in range(0, len(indices), micro_batch_size)]
