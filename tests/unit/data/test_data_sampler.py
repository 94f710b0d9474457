"""The global-batch sampler: a pure function of the step, disjoint across ranks, covering each epoch."""

from __future__ import annotations

import pytest

from nemo_rpo.data import DataError, GlobalBatchSampler, split_micro_batches


def test_steps_are_a_pure_function_of_the_step():
    a = GlobalBatchSampler(50, 8, seed=3)
    b = GlobalBatchSampler(50, 8, seed=3)
    forward = [a.indices_for_step(s) for s in range(20)]
    backward = [b.indices_for_step(s) for s in reversed(range(20))][::-1]  # "resume" in any order
    assert forward == backward
    assert GlobalBatchSampler(50, 8, seed=4).indices_for_step(0) != forward[0]


def test_dp_ranks_are_disjoint_contiguous_slices_of_the_global_batch():
    dp = [GlobalBatchSampler(40, 12, dp_rank=r, dp_size=3, seed=1) for r in range(3)]
    for step in range(7):
        slices = [s.indices_for_step(step) for s in dp]
        assert [len(x) for x in slices] == [4, 4, 4]
        assert sum(slices, []) == dp[0].global_indices_for_step(step)
        assert len(set(sum(slices, []))) == 12


def test_each_epoch_visits_distinct_rows_and_drops_the_incomplete_batch():
    sampler = GlobalBatchSampler(10, 4, seed=0)
    assert sampler.steps_per_epoch == 2
    for epoch in range(3):
        seen = sampler.indices_for_step(2 * epoch) + sampler.indices_for_step(2 * epoch + 1)
        assert len(set(seen)) == 8 and set(seen) <= set(range(10))
        assert sampler.epoch_of(2 * epoch + 1) == epoch
    assert sampler.epoch_order(0) != sampler.epoch_order(1)


def test_without_shuffle_rows_come_in_order_every_epoch():
    sampler = GlobalBatchSampler(10, 4, shuffle=False)
    assert [sampler.indices_for_step(s) for s in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3]]


def test_dataset_smaller_than_a_global_batch():
    with pytest.raises(DataError) as err:
        GlobalBatchSampler(5, 8, source="train.jsonl")
    assert (
        str(err.value)
        == "train.jsonl: trainer.global_batch_size: 8 is more than the 5 examples in the dataset"
    )


@pytest.mark.parametrize(
    "num_examples, global_batch_size, micro_batch_size, dp_size, suggestion",
    [
        (5, 8, 4, 1, "; set trainer.global_batch_size=4"),  # whole micro-batches still fit
        (2, 32, 8, 1, "; set trainer.global_batch_size=2 trainer.micro_batch_size=2"),  # not one micro-batch
        (7, 8, 2, 2, "; set trainer.global_batch_size=4"),  # whole micro-batches on both ranks
        (3, 8, 4, 2, "; set trainer.global_batch_size=2 trainer.micro_batch_size=1"),  # one row per rank
        (1, 8, 4, 2, " (each of the 2 data-parallel ranks needs at least one)"),
    ],
)  # fmt: skip
def test_a_dataset_smaller_than_a_global_batch_gets_sizes_that_fit(
    num_examples, global_batch_size, micro_batch_size, dp_size, suggestion
):
    with pytest.raises(DataError) as err:
        GlobalBatchSampler(num_examples, global_batch_size, dp_size=dp_size, source="d.jsonl",
                           micro_batch_size=micro_batch_size)  # fmt: skip
    assert str(err.value) == (f"d.jsonl: trainer.global_batch_size: {global_batch_size} is more than the "
                              f"{num_examples} examples in the dataset{suggestion}")  # fmt: skip
    if "set" in suggestion:  # the suggested sizes pass the config's checks and the sampler's
        sizes = dict(kv.split("=") for kv in suggestion.split("set ")[1].split())
        gbs = int(sizes["trainer.global_batch_size"])
        mbs = int(sizes.get("trainer.micro_batch_size", micro_batch_size))
        assert gbs <= num_examples and gbs % (mbs * dp_size) == 0


@pytest.mark.parametrize("kwargs", [{"dp_size": 3}, {"dp_rank": 2, "dp_size": 2}, {"global_batch_size": 0}])
def test_bad_sizes(kwargs):
    with pytest.raises(ValueError):
        GlobalBatchSampler(**{"num_examples": 20, "global_batch_size": 8, **kwargs})


def test_micro_batches():
    assert split_micro_batches([5, 1, 7, 3], 2) == [[5, 1], [7, 3]]
    with pytest.raises(ValueError, match="must divide"):
        split_micro_batches([5, 1, 7], 2)
