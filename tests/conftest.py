"""Fixtures shared by every test directory. Fault injection lives here, never in the package."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch


def nan_lookup(lookup: Callable) -> Callable:
    """A ``ref_lookup`` that returns NaN reference log-probs where ``lookup`` returns a table's rows."""

    def poisoned(batch):  # noqa: ANN001, ANN202
        rows = lookup(batch)
        return None if rows is None else torch.full_like(rows, float("nan"))

    return poisoned


@pytest.fixture
def nan_reference_at(monkeypatch) -> Callable[..., None]:
    """``nan_reference_at(3, 4)``: the offline loop run in this process gets NaN reference log-probs at
    its 3rd and 4th ``train_step`` (steps 3 and 4 of a fresh run), so those steps have a NaN loss and NaN
    gradients (losses that use a reference). Wraps the ``train_step`` the loop calls."""

    def install(*steps: int) -> None:
        from nemo_rpo.algorithms import offline

        original = offline.train_step
        calls = 0

        def train_step(model, optimizer, scheduler, microbatches, ref_lookup, loss):  # noqa: ANN001, ANN202
            nonlocal calls
            calls += 1
            lookup = nan_lookup(ref_lookup) if calls in steps else ref_lookup
            return original(model, optimizer, scheduler, microbatches, lookup, loss)

        monkeypatch.setattr(offline, "train_step", train_step)

    return install


@pytest.fixture
def one_process(monkeypatch):
    """A test that builds megatron models in this process: no launcher rank variables in the way, and the
    process's distributed state torn down afterwards."""
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    yield
    from nemo_rpo.distributed.launch import teardown_distributed

    teardown_distributed()
