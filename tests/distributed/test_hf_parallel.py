"""Hugging Face weights sharded over TP=2 and PP=2 give the HF model's logits and log-probs.

One 2-process launch of ``_hf_worker.py``; the TP=1 comparison is tests/unit/models/test_hf_conversion.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _launch import run_workers

pytest.importorskip("transformers")
pytestmark = pytest.mark.distributed

WORKER = Path(__file__).with_name("_hf_worker.py")


@pytest.fixture(scope="module")
def errors(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("hf_parallel")
    run_workers(WORKER, 2, [str(out)])
    return torch.load(out / "hf_parallel.pt", weights_only=True)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_tp2_logits_equal_hf(errors: dict, kind: str) -> None:
    assert errors[f"{kind}_logit_scale"] > 1.0
    assert errors[f"{kind}_tp2_logits"] < 1e-4


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_pp2_sequence_logps_equal_hf(errors: dict, kind: str) -> None:
    assert errors[f"{kind}_pp_stage_layers"] == 1  # each stage holds one of the two layers
    assert errors[f"{kind}_pp2_seq_logps"] < 1e-4
