"""Chunked LM head + NLL under TP=2 (vocab-parallel: each rank holds its slice of the output weight)
agrees with one rank and with plain ``log_softmax`` over the unpadded vocabulary (within 1e-5, fp32).

Two launches of ``_chunked_logps_worker.py`` (TP=2 and TP=1, ~30 s on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _launch import run_workers

pytestmark = pytest.mark.distributed

WORKER = Path(__file__).with_name("_chunked_logps_worker.py")
ATOL = 1e-5


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, torch.Tensor]]:
    out = tmp_path_factory.mktemp("chunked_logps")
    run_workers(WORKER, 2, [str(out)])
    run_workers(WORKER, 1, [str(out)])
    return {tp: torch.load(out / f"tp{tp}.pt", weights_only=True) for tp in (1, 2)}


@pytest.mark.parametrize("tp", [1, 2])
def test_vocab_parallel_function_matches_plain_log_softmax(results: dict, tp: int) -> None:
    got = results[tp]
    assert (got["ref_nll"] > 0).all()
    for name in ("nll", "grad_hidden", "grad_weight"):
        torch.testing.assert_close(got[f"fn_{name}"], got[f"ref_{name}"], atol=ATOL, rtol=0, msg=name)
    assert got["fn_grad_weight"][100:].abs().max() == 0  # the padding rows (on rank 1 at TP=2)


def test_tp2_model_matches_tp1_and_the_whole_logits(results: dict) -> None:
    torch.testing.assert_close(results[2]["model_nll"], results[1]["model_nll"], atol=ATOL, rtol=0)
    for tp in (1, 2):
        torch.testing.assert_close(
            results[tp]["model_nll"], results[tp]["model_nll_whole"], atol=ATOL, rtol=0
        )
        assert results[tp]["model_grad_diff"] <= ATOL
