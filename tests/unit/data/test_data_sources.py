"""Hugging Face datasets as training data (the ``datasets`` extra): a Hub-style parquet directory, a
``save_to_disk`` folder with splits, an arrow file, JSONL shards by glob, column renames, and the same
one-line errors naming the row."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

datasets = pytest.importorskip("datasets")

from nemo_rpo.config.schema import ColumnsConfig, ConfigError, DataConfig  # noqa: E402
from nemo_rpo.config.store import load_config  # noqa: E402
from nemo_rpo.data import ByteTokenizer, DataError, load_preference_dataset  # noqa: E402
from nemo_rpo.data.prompts import load_prompts  # noqa: E402

FIXTURES = Path(__file__).parents[2] / "fixtures" / "formats"


def rows_of(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines()]


def load(path, *, require_rewards: bool = False, **data):
    return load_preference_dataset(path, DataConfig(**data), ByteTokenizer(), k=2, max_seq_len=128,
                                   require_rewards=require_rewards)  # fmt: skip


def as_tuples(ds) -> list[tuple]:
    return [(e.prompt_ids, e.response_ids, e.rewards) for e in ds.examples]


def hub_parquet_dir(root: Path, rows: list[dict]) -> Path:
    """A Hub snapshot's layout: ``data/train-00000-of-00001.parquet``."""
    (root / "data").mkdir(parents=True)
    datasets.Dataset.from_list(rows).to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    return root


def test_parquet_directory_reads_like_the_jsonl_it_came_from(tmp_path):
    path = hub_parquet_dir(tmp_path / "ds", rows_of("nemo_aligner_chat.jsonl"))
    ds = load(path, require_rewards=True)
    assert ds.format == "nemo_aligner" and len(ds) == 5
    assert as_tuples(ds) == as_tuples(load(FIXTURES / "nemo_aligner_chat.jsonl", require_rewards=True))


def test_save_to_disk_folder_picks_the_split(tmp_path):
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows_of("trl_explicit.jsonl")),
                                   "test": datasets.Dataset.from_list(rows_of("trl_explicit.jsonl")[:2])})  # fmt: skip
    splits.save_to_disk(str(tmp_path / "saved"))
    assert len(load(tmp_path / "saved")) == 5
    assert len(load(tmp_path / "saved", split="test")) == 2
    with pytest.raises(DataError) as err:
        load(tmp_path / "saved", split="dev")
    assert str(err.value) == f"{tmp_path / 'saved'}: data.split: no split 'dev'; the dataset has train, test"


def test_arrow_file_and_jsonl_shards_by_glob(tmp_path):
    datasets.Dataset.from_list(rows_of("trl_conversational.jsonl")).save_to_disk(str(tmp_path / "one"))
    (arrow,) = (tmp_path / "one").glob("*.arrow")
    expected = as_tuples(load(FIXTURES / "trl_conversational.jsonl"))
    assert as_tuples(load(arrow)) == expected
    rows = rows_of("trl_implicit.jsonl")
    (tmp_path / "shards").mkdir()
    for i, part in enumerate((rows[:3], rows[3:])):
        (tmp_path / "shards" / f"part-{i}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    assert as_tuples(load(str(tmp_path / "shards" / "*.jsonl"))) == as_tuples(
        load(FIXTURES / "trl_implicit.jsonl")
    )


def test_column_renames(tmp_path):
    renamed = [
        {"question": r["prompt"], "good": r["chosen"], "bad": r["rejected"]}
        for r in rows_of("trl_explicit.jsonl")
    ]
    path = hub_parquet_dir(tmp_path / "ds", renamed)
    columns = ColumnsConfig(prompt="question", chosen="good", rejected="bad")
    assert as_tuples(load(path, columns=columns)) == as_tuples(load(FIXTURES / "trl_explicit.jsonl"))
    jsonl = tmp_path / "renamed.jsonl"  # the same renames apply to JSONL keys
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in renamed))
    assert as_tuples(load(jsonl, columns=columns)) == as_tuples(load(FIXTURES / "trl_explicit.jsonl"))
    with pytest.raises(DataError) as err:
        load(path, columns=ColumnsConfig(prompt="query", chosen="good", rejected="bad"))
    assert (
        str(err.value)
        == f"{path}: data.columns.prompt: no column 'query'; the dataset has question, good, bad"
    )


def test_errors_name_the_row(tmp_path):
    rows = rows_of("trl_explicit.jsonl")
    rows[2]["chosen"] = " "
    path = hub_parquet_dir(tmp_path / "ds", rows)
    with pytest.raises(DataError) as err:
        load(path)
    assert str(err.value) == f"{path}: row 2: chosen: empty"
    assert (err.value.line, err.value.unit) == (2, "row")


def test_a_null_column_value_is_an_absent_field(tmp_path):
    rows = [
        {**r, "chosen_reward": None, "rejected_reward": None} for r in rows_of("nemo_aligner_rewards.jsonl")
    ]
    rows[3] = {**rows[3], "chosen_reward": 1.0, "rejected_reward": 0.0}  # the columns exist, null elsewhere
    path = hub_parquet_dir(tmp_path / "ds", rows)
    with pytest.raises(DataError) as err:
        load(path, require_rewards=True)
    assert str(err.value) == f"{path}: row 0: chosen_reward: missing (rewards are never defaulted)"
    with pytest.raises(DataError) as err:
        load(path)
    assert str(err.value) == (f"{path}: row 3: chosen_reward: present, but the first record has no rewards; "
                              "give every record rewards or none")  # fmt: skip


def test_missing_path_and_missing_library(tmp_path, monkeypatch):
    with pytest.raises(DataError) as err:
        load(tmp_path / "nope.parquet")
    assert str(err.value) == f"{tmp_path / 'nope.parquet'}: file: not found"
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DataError) as err:
        load(tmp_path)
    assert str(err.value) == (f"{tmp_path}: data.train_path: reading a Hugging Face dataset needs the datasets "
                              "library: pip install 'nemo-rpo[datasets]'")  # fmt: skip


def test_split_and_columns_from_the_command_line():
    cfg = load_config(["data.train_path=ds", "data.split=test", "data.columns.prompt=question"])
    assert (cfg.data.split, cfg.data.columns.prompt, cfg.data.columns.renames()) == (
        "test",
        "question",
        {"question": "prompt"},
    )
    with pytest.raises(ConfigError, match="data.columns.chosen: column 'x' is already read as 'prompt'"):
        DataConfig(columns=ColumnsConfig(prompt="x", chosen="x"))


def test_online_prompt_set_from_a_dataset(tmp_path):
    renamed = [{"question": r["prompt"]} for r in rows_of("trl_explicit.jsonl")]
    path = hub_parquet_dir(tmp_path / "ds", renamed)
    prompts = load_prompts(path, ByteTokenizer(), max_prompt_len=64, renames={"question": "prompt"})
    assert [p.text for p in prompts] == [r["question"] for r in renamed]
