"""Preference records: the three on-disk shapes, format detection and validation.

=============  =============================================================================  ====
format         fields of one JSON line                                                        K
=============  =============================================================================  ====
native         ``prompt``, ``responses`` [K strings], ``rewards`` [K numbers], optional ``id``  any
nemo_aligner   ``prompt``, ``chosen_response``, ``rejected_response``, ``chosen_reward``,       2
               ``rejected_reward``
trl            ``prompt``, ``chosen``, ``rejected`` (no rewards)                                2
=============  =============================================================================  ====

A prompt is a string or a list of ``{"role", "content"}`` messages. A response is a string, or (as
in TRL's conversational datasets) a list holding one ``assistant`` message. Native responses are
sorted by reward, best first (stable); pairwise formats keep the chosen response first. A missing
reward is an error, never a default.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from nemo_rpo.data.errors import DataError
from nemo_rpo.data.jsonl import json_type, read_jsonl

FORMATS = ("native", "nemo_aligner", "trl")

Message = dict[str, str]
Prompt = str | list[Message]

# The key that identifies each format when auto-detecting from the first record.
_FORMAT_KEYS = {"native": "responses", "nemo_aligner": "chosen_response", "trl": "chosen"}
_PAIR_FIELDS = {"nemo_aligner": ("chosen_response", "rejected_response"), "trl": ("chosen", "rejected")}
_ABSENT: Any = object()  # "read the field from the record"; JSON null is a value, not absence


@dataclass
class PreferenceRecord:
    """One validated, untokenized record.

    Attributes:
        line: 1-based line in the source file.
        prompt: The prompt text, or its chat messages.
        responses: K responses, best first.
        rewards: K rewards aligned with ``responses``, or None (trl format).
        response_fields: Where each response came from (``responses[2]``, ``chosen``), for errors.
        id: The record's ``id`` when it has one.
    """

    line: int
    prompt: Prompt
    responses: list[str]
    rewards: list[float] | None
    response_fields: list[str]
    id: str | int | None = None


def detect_format(record: dict[str, Any], *, path: str, line: int) -> str:
    """The format of ``record``, judged by its keys (``responses``, ``chosen_response``, ``chosen``).

    Raises:
        DataError: No format's key is present.
    """
    for fmt, key in _FORMAT_KEYS.items():
        if key in record:
            return fmt
    raise DataError(path, line, "record",
                    f"cannot detect the format from keys {sorted(record)}; expected 'responses' (native), "
                    "'chosen_response' (nemo_aligner) or 'chosen' (trl)")  # fmt: skip


def parse_record(record: dict[str, Any], fmt: str, *, k: int, path: str, line: int) -> PreferenceRecord:
    """Validate one JSON object of format ``fmt`` and turn it into a :class:`PreferenceRecord`.

    Args:
        record: The parsed JSON object.
        fmt: One of :data:`FORMATS`.
        k: The configured number of responses per prompt.
        path: Source file, for errors.
        line: Source line, for errors.

    Raises:
        DataError: Naming the first field that is missing, mistyped, empty, non-finite or of the wrong length.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    fields = _Fields(record, path, line)
    if fmt in _PAIR_FIELDS and k != 2:
        raise DataError(path, line, "k", f"{fmt} records hold 2 responses, but k={k}; set k=2")
    record_id = fields.id()
    prompt = fields.prompt()
    if fmt == "native":
        responses = fields.response_list("responses", k)
        response_fields = [f"responses[{i}]" for i in range(k)]
        rewards = fields.reward_list("rewards", k)
        order = sorted(range(k), key=lambda i: -rewards[i])  # stable: ties keep file order
        responses, rewards = [responses[i] for i in order], [rewards[i] for i in order]
        response_fields = [response_fields[i] for i in order]
    else:
        response_fields = list(_PAIR_FIELDS[fmt])
        responses = [fields.response(name) for name in response_fields]
        rewards = None
        if fmt == "nemo_aligner":
            rewards = [fields.reward("chosen_reward"), fields.reward("rejected_reward")]
    return PreferenceRecord(line, prompt, responses, rewards, response_fields, record_id)


def read_preference_records(
    path: str | os.PathLike[str], *, k: int, fmt: str = "auto"
) -> tuple[list[PreferenceRecord], str]:
    """Read and validate every record of a preference JSONL file.

    Args:
        path: The file.
        k: Responses per prompt; every record must have exactly this many.
        fmt: ``auto`` (detect from the first record) or one of :data:`FORMATS`.

    Returns:
        The records in file order and the format they were read as.

    Raises:
        DataError: On the first bad line, a duplicate ``id``, or a file without records.
    """
    name = str(path)
    records: list[PreferenceRecord] = []
    first_line_of_id: dict[str | int, int] = {}
    for line, obj in read_jsonl(path):
        if fmt == "auto":
            fmt = detect_format(obj, path=name, line=line)
        rec = parse_record(obj, fmt, k=k, path=name, line=line)
        if rec.id is not None:
            if rec.id in first_line_of_id:
                raise DataError(
                    name, line, "id", f"duplicate {rec.id!r} (first on line {first_line_of_id[rec.id]})"
                )
            first_line_of_id[rec.id] = line
        records.append(rec)
    if not records:
        raise DataError(name, None, "file", "empty dataset (no records)")
    return records, fmt


class _Fields:
    """Typed accessors for one record's fields; each raises a DataError naming the field."""

    def __init__(self, record: dict[str, Any], path: str, line: int) -> None:
        self.record, self.path, self.line = record, path, line

    def error(self, field: str, problem: str) -> DataError:
        return DataError(self.path, self.line, field, problem)

    def get(self, field: str, hint: str = "") -> Any:
        if field not in self.record:
            raise self.error(field, "missing" + hint)
        return self.record[field]

    def id(self) -> str | int | None:
        value = self.record.get("id")  # the only optional field
        if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
            raise self.error("id", f"expected a string or an integer, got {json_type(value)}")
        return value

    def prompt(self) -> Prompt:
        value = self.get("prompt")
        if isinstance(value, str):
            if not value.strip():
                raise self.error("prompt", "empty")
            return value
        if not isinstance(value, list):
            raise self.error("prompt", f"expected a string or a list of messages, got {json_type(value)}")
        if not value:
            raise self.error("prompt", "empty")
        messages = [self.message(item, f"prompt[{i}]") for i, item in enumerate(value)]
        if not any(m["content"].strip() for m in messages):
            raise self.error("prompt", "empty")
        return messages

    def message(self, item: Any, field: str) -> Message:
        if not isinstance(item, dict):
            raise self.error(field, f"expected a {{role, content}} object, got {json_type(item)}")
        for key in ("role", "content"):
            if key not in item:
                raise self.error(f"{field}.{key}", "missing")
            if not isinstance(item[key], str):
                raise self.error(f"{field}.{key}", f"expected a string, got {json_type(item[key])}")
        if not item["role"].strip():
            raise self.error(f"{field}.role", "empty")
        return {"role": item["role"], "content": item["content"]}

    def response(self, field: str, value: Any = _ABSENT) -> str:
        value = self.get(field) if value is _ABSENT else value
        if isinstance(value, list):  # TRL conversational: [{"role": "assistant", "content": ...}]
            if len(value) != 1:
                raise self.error(
                    field, f"expected a string or one assistant message, got {len(value)} messages"
                )
            msg = self.message(value[0], f"{field}[0]")
            if msg["role"] != "assistant":
                raise self.error(f"{field}[0].role", f"expected 'assistant', got {msg['role']!r}")
            value = msg["content"]
        if not isinstance(value, str):
            raise self.error(field, f"expected a string, got {json_type(value)}")
        if not value.strip():
            raise self.error(field, "empty")
        return value

    def response_list(self, field: str, k: int) -> list[str]:
        value = self.get(field)
        if not isinstance(value, list):
            raise self.error(field, f"expected a list of {k} strings, got {json_type(value)}")
        if len(value) != k:
            raise self.error(field, f"expected {k} responses (k={k}), got {len(value)}")
        return [self.response(f"{field}[{i}]", item) for i, item in enumerate(value)]

    def reward(self, field: str, value: Any = _ABSENT) -> float:
        value = self.get(field, " (rewards are never defaulted)") if value is _ABSENT else value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(field, f"expected a number, got {json_type(value)}")
        try:
            reward = float(value)
        except OverflowError:  # an integer literal too large for a float
            reward = math.inf
        if not math.isfinite(reward):
            raise self.error(field, f"not finite ({reward})")
        return reward

    def reward_list(self, field: str, k: int) -> list[float]:
        value = self.get(field, " (rewards are never defaulted)")
        if not isinstance(value, list):
            raise self.error(field, f"expected a list of {k} numbers, got {json_type(value)}")
        if len(value) != k:
            raise self.error(field, f"expected {k} rewards, one per response, got {len(value)}")
        return [self.reward(f"{field}[{i}]", item) for i, item in enumerate(value)]
