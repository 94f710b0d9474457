"""A reward-model checkpoint scores the same under TP=1 x DP=2, TP=2 and PP=2 (one 2-process launch)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _launch import run_workers

pytestmark = pytest.mark.distributed

WORKERS = Path(__file__).with_name("_rm_workers.py")
ATOL = 1e-5


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("rm_layouts")
    run_workers(WORKERS, 2, [str(out)])
    return torch.load(out / "rm_layouts.pt", weights_only=True)


def test_serving_matches_the_model_forward(layouts: dict) -> None:
    scores = layouts["tp1_dp2"]
    assert scores.shape == (10,) and scores.dtype == torch.float32
    assert layouts["step"] == 5
    torch.testing.assert_close(scores, layouts["direct"], atol=ATOL, rtol=0)
    assert scores.std() > 1e-3  # distinct inputs, distinct scores


@pytest.mark.parametrize("layout", ["tp2", "pp2"])
def test_scores_match_tp1(layouts: dict, layout: str) -> None:
    torch.testing.assert_close(layouts[layout], layouts["tp1_dp2"], atol=ATOL, rtol=0)
    assert layouts[f"{layout}_empty"].shape == (0,)


def test_every_rank_gets_the_same_scores(layouts: dict) -> None:
    rank0, rank1 = layouts["all_ranks"]
    for key in ("tp1_dp2", "tp2", "pp2"):
        torch.testing.assert_close(rank1[key], rank0[key], atol=0, rtol=0)
