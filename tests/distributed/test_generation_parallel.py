"""Sampling is layout-independent: TP=2 and PP=2 draw the same tokens with the same log-probs as TP=1.

One 2-process launch of ``_generation_worker.py`` (tens of seconds on 2 cores) samples the same policy
(layout-invariant init) under TP=1 (DP=2), TP=2 and PP=2, with the KV cache, without it, and greedily.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _launch import run_workers

pytestmark = pytest.mark.distributed

WORKER = Path(__file__).with_name("_generation_worker.py")
RUNS = ("sample", "sample_no_cache", "greedy")
ATOL = 1e-5


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("generation")
    run_workers(WORKER, 2, [str(out)])
    return torch.load(out / "generation.pt", weights_only=True)


@pytest.mark.parametrize("layout", ["tp1_pp1", "tp2_pp1", "tp1_pp2"])
def test_every_rank_holds_the_same_samples(results: dict, layout: str) -> None:
    assert results[layout]["ranks_agree"]


@pytest.mark.parametrize("layout", ["tp2_pp1", "tp1_pp2"])
@pytest.mark.parametrize("run", RUNS)
def test_layout_matches_tp1(results: dict, layout: str, run: str) -> None:
    ref, other = results["tp1_pp1"][run], results[layout][run]
    assert ref["mask"].sum() > 0 and (ref["logps"][ref["mask"].bool()] < 0).all()
    assert torch.equal(other["tokens"], ref["tokens"])
    assert torch.equal(other["mask"], ref["mask"])
    torch.testing.assert_close(other["logps"], ref["logps"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("layout", ["tp1_pp1", "tp2_pp1", "tp1_pp2"])
def test_kv_cache_matches_full_recompute(results: dict, layout: str) -> None:
    cached, recomputed = results[layout]["sample"], results[layout]["sample_no_cache"]
    assert torch.equal(cached["tokens"], recomputed["tokens"])
    torch.testing.assert_close(cached["logps"], recomputed["logps"], atol=ATOL, rtol=0)
