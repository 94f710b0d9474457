"""JSON Lines reading and writing with errors that name the file and line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from nemo_rpo.data.errors import DataError


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line, record)`` for each non-blank line of a JSON Lines file, streaming.

    Lines are read as bytes and decoded one at a time, so invalid UTF-8 is reported on its own
    line. A UTF-8 byte-order mark at the start of the file is ignored.

    Args:
        path: The file.

    Yields:
        The 1-based line number and the JSON object on it.

    Raises:
        DataError: The file is missing, or a line is not UTF-8, not JSON, or not a JSON object.
    """
    name = str(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataError(name, None, "file", "not found") from None
    except OSError as err:
        raise DataError(name, None, "file", f"cannot read: {err.strerror}") from None
    with f:
        for line, raw in enumerate(f, start=1):
            if line == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(name, line, "record", f"invalid UTF-8 at byte {err.start + 1}") from None
            if not text.strip():
                continue
            try:
                record = json.loads(text.rstrip("\r\n"))  # so an error at the end is at this line's end
            except json.JSONDecodeError as err:
                raise DataError(
                    name, line, "record", f"invalid JSON: {err.msg} (column {err.pos + 1})"
                ) from None
            if not isinstance(record, dict):
                raise DataError(name, line, "record", f"expected a JSON object, got {json_type(record)}")
            yield line, record


def write_jsonl(records: Iterable[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write ``records`` one JSON object per line (UTF-8, ``\\n``), creating parent directories.

    Returns:
        The path written.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
    return out


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
