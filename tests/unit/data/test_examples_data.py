"""The sample files under examples/data load in the format the README says they are."""

from __future__ import annotations

from pathlib import Path

import pytest

from nemo_rpo.config.schema import DataConfig
from nemo_rpo.data import ByteTokenizer, load_preference_dataset

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "data"


@pytest.mark.parametrize(
    ("name", "fmt", "k", "has_rewards"),
    [("native_k4.jsonl", "native", 4, True), ("nemo_aligner.jsonl", "nemo_aligner", 2, True),
     ("trl.jsonl", "trl", 2, False)],
)  # fmt: skip
def test_example_file_loads(name: str, fmt: str, k: int, has_rewards: bool) -> None:
    ds = load_preference_dataset(EXAMPLES / name, DataConfig(), ByteTokenizer(), k=k, max_seq_len=256)
    assert ds.format == fmt
    assert len(ds.examples) == 2
    for ex in ds.examples:
        assert len(ex.response_ids) == k and all(ex.response_ids)
        assert (ex.rewards is not None) == has_rewards
        if has_rewards:
            assert list(ex.rewards) == sorted(ex.rewards, reverse=True)  # best response first
