"""The bundled synthetic dataset: correct answers, graded rewards, and the shipped files up to date."""

from __future__ import annotations

import difflib
import json

import pytest

from nemo_rpo.config.schema import DataConfig
from nemo_rpo.data import (
    ByteTokenizer,
    DataError,
    default_train_path,
    load_preference_dataset,
    make_synthetic_preferences,
    read_jsonl,
    write_jsonl,
)
from nemo_rpo.data.synthetic import BUNDLED_K, BUNDLED_NUM_PROMPTS, BUNDLED_SEED


def solve(prompt: str) -> str:
    task, arg = prompt.rstrip("\n").split(": ")
    return {"reverse": arg[::-1], "upper": arg.upper(), "sort": " ".join(sorted(arg.split()))}[task]


def test_records_hold_the_answer_and_graded_distinct_wrong_ones():
    records = make_synthetic_preferences(200, 4, seed=1)
    assert records == make_synthetic_preferences(200, 4, seed=1)
    assert {r["prompt"].split(":")[0] for r in records} == {"reverse", "sort", "upper"}
    for r in records:
        answer = solve(r["prompt"])
        assert answer in r["responses"] and len(set(r["responses"])) == 4
        expected = [round(difflib.SequenceMatcher(None, x, answer).ratio(), 4) for x in r["responses"]]
        assert r["rewards"] == expected
        assert max(r["rewards"]) == 1.0 and sorted(r["rewards"])[-2] < 1.0  # only the answer scores 1
        assert len(r["prompt"]) <= 32 and max(len(x) for x in r["responses"]) <= 24
    # The answer is not always listed first, so sorting by reward does real work.
    assert sum(r["responses"][0] != solve(r["prompt"]) for r in records) > 100


@pytest.mark.parametrize("k", BUNDLED_K)
def test_shipped_file_matches_the_generator(k):
    shipped = [record for _, record in read_jsonl(default_train_path(k))]
    assert shipped == make_synthetic_preferences(BUNDLED_NUM_PROMPTS, k, BUNDLED_SEED)


def test_bundled_dataset_loads_sorted_and_short():
    ds = load_preference_dataset(default_train_path(), DataConfig(), ByteTokenizer(), k=4, max_seq_len=64)
    assert len(ds) == 512 and ds.format == "native"
    assert (ds.stats.num_truncated, ds.stats.num_dropped) == (0, 0) and ds.stats.max_seq_tokens < 64
    for ex in ds.examples:
        assert ex.rewards == sorted(ex.rewards, reverse=True) and ex.rewards[0] == 1.0 > ex.rewards[-1]


def test_unbundled_k_is_a_clear_error():
    with pytest.raises(DataError) as err:
        default_train_path(3)
    assert err.value.field == "data.train_path"
    assert "no bundled synthetic dataset for k=3 (bundled: k=2, k=4)" in err.value.problem


def test_write_jsonl_round_trip(tmp_path):
    records = [{"prompt": "é", "x": [1, 2.5]}, {"prompt": "b"}]
    path = write_jsonl(records, tmp_path / "sub" / "out.jsonl")
    assert [r for _, r in read_jsonl(path)] == records
    assert path.read_text(encoding="utf-8").splitlines()[0] == json.dumps(records[0], ensure_ascii=False)
