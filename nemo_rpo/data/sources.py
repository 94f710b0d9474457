"""Where records come from: a JSONL file (lines), or a Hugging Face dataset (rows).

A path names a Hugging Face dataset when it is a directory (a ``save_to_disk`` folder, or parquet /
arrow / JSON Lines shards such as a Hub snapshot's ``data/train-*.parquet``), a ``.parquet`` or
``.arrow`` file, or a glob (``shards/*.jsonl``). Those are read through the ``datasets`` library
(the ``datasets`` extra); everything else is JSON Lines, read line by line. Either way each record
is a dict, validated by the same code with the same errors; a dataset's errors name the row
(``dataset[n]``, from 0) instead of the line. A null in a dataset column is an absent field: columns
hold every key of every row, so a null is how a row without that field is stored.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nemo_rpo.data.errors import DataError
from nemo_rpo.data.jsonl import read_jsonl

_DATASET_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".json": "json"}
_GLOB_CHARS = "*?["


@dataclass
class RecordSource:
    """The records of one path, each as ``(position, record)``.

    Attributes:
        path: The path as given.
        unit: ``line`` (JSONL, 1-based) or ``row`` (a Hugging Face dataset, 0-based).
        renames: ``{column: field}`` applied to every record (``data.columns``).
        split: The dataset split to read (a Hugging Face directory with several splits).
    """

    path: str
    unit: str
    renames: Mapping[str, str]
    split: str = "train"

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any]]]:
        rows = (
            read_jsonl(self.path)
            if self.unit == "line"
            else _dataset_rows(self.path, self.split, self.renames)
        )
        for position, record in rows:
            yield position, _rename(record, self.renames)


def open_source(
    path: str | os.PathLike[str], *, split: str = "train", renames: Mapping[str, str] | None = None
) -> RecordSource:
    """The records at ``path``: a JSONL file, or a Hugging Face dataset (see the module docstring)."""
    name = str(path)
    unit = "row" if is_dataset_path(name) else "line"
    return RecordSource(name, unit, dict(renames or {}), split)


def is_dataset_path(path: str) -> bool:
    """Whether ``path`` is read through ``datasets``: a directory, a parquet / arrow file, or a glob."""
    return (
        os.path.isdir(path)
        or Path(path).suffix in (".parquet", ".arrow")
        or any(c in path for c in _GLOB_CHARS)
    )


def _rename(record: dict[str, Any], renames: Mapping[str, str]) -> dict[str, Any]:
    if not renames:
        return record
    out = {k: v for k, v in record.items() if k not in renames}
    out.update({renames[k]: v for k, v in record.items() if k in renames})
    return out


def _dataset_rows(path: str, split: str, renames: Mapping[str, str]) -> Iterator[tuple[int, dict[str, Any]]]:
    dataset = _load_dataset(path, split)
    missing = sorted(set(renames) - set(dataset.column_names))
    if missing:
        field = renames[missing[0]]
        raise DataError(path, None, f"data.columns.{field}",
                        f"no column {missing[0]!r}; the dataset has {', '.join(dataset.column_names)}")  # fmt: skip
    for row, record in enumerate(dataset):
        yield row, {k: v for k, v in record.items() if v is not None}


def _load_dataset(path: str, split: str):
    """A ``datasets.Dataset`` of ``path`` (one split); every failure is a one-line DataError."""
    try:
        import datasets
    except ImportError as err:
        raise DataError(path, None, "data.train_path", "reading a Hugging Face dataset needs the datasets "
                        "library: pip install 'nemo-rpo[datasets]'") from err  # fmt: skip
    is_glob = any(c in path for c in _GLOB_CHARS)
    if not is_glob and not os.path.exists(path):
        raise DataError(path, None, "file", "not found")
    with _quiet(datasets):
        try:
            if os.path.isdir(path) and _saved_to_disk(Path(path)):
                loaded = datasets.load_from_disk(path)
                if isinstance(loaded, datasets.DatasetDict):
                    if split not in loaded:
                        raise DataError(path, None, "data.split",
                                        f"no split {split!r}; the dataset has {', '.join(loaded)}")  # fmt: skip
                    loaded = loaded[split]
                return loaded
            if os.path.isdir(path):
                return datasets.load_dataset(path, split=split)
            builder = _DATASET_SUFFIXES.get(Path(path).suffix)
            if builder is None:
                raise DataError(path, None, "file",
                                f"cannot tell the file type; name files {', '.join(_DATASET_SUFFIXES)}")  # fmt: skip
            return datasets.load_dataset(
                builder, data_files=path, split="train"
            )  # one file or glob: one split
        except DataError:
            raise
        except Exception as err:  # noqa: BLE001 - datasets raises many types; each means "cannot read this"
            problem = next(
                (line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__
            )
            field = "data.split" if "split" in problem.lower() else "file"
            raise DataError(path, None, field, f"cannot read as a Hugging Face dataset: {problem}") from err


def _saved_to_disk(path: Path) -> bool:
    """A ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` folder (not a directory of shards)."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


@contextlib.contextmanager
def _quiet(datasets):
    """No progress bars or info logs while loading: a data error must stay the only line on stderr."""
    bars_were_on = not datasets.are_progress_bars_disabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars_were_on:
            datasets.enable_progress_bars()
