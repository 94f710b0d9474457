"""Preference records: the three on-disk shapes, format detection and validation.

=============  =============================================================================  ====
format         fields of one record (a JSON line or a dataset row)                            K
=============  =============================================================================  ====
native         ``prompt``, ``responses`` [K], ``rewards`` [K numbers], optional ``id``          any
nemo_aligner   ``prompt``, ``chosen_response``, ``rejected_response``, and ``chosen_reward``,   2
               ``rejected_reward`` (on every record, or, for losses without rewards, on none)
trl            ``prompt``, ``chosen``, ``rejected`` (no rewards); or ``chosen`` and ``rejected``  2
               alone, the prompt being their shared beginning (TRL's implicit prompt)
=============  =============================================================================  ====

A prompt is a string or a list of ``{"role", "content"}`` messages. A response is a string, or one
``assistant`` message: a ``{"role", "content"}`` object (NeMo-Aligner's chat form) or a list holding
one (TRL's conversational form). Message responses need a prompt of messages; the two are rendered
together through the tokenizer's chat template. All responses of a record have the same form.

The implicit prompt follows TRL's ``extract_prompt``: for strings, the longest shared beginning, less
a trailing space (``"...Assistant:"``, responses ``" It is blue."``); for messages, the longest run of
equal leading messages, after which each side must hold exactly one assistant message. Whether a file
has rewards and whether its prompts are implicit are decided by its first record.

Native responses are sorted by reward, best first (stable); pairwise formats keep the chosen response
first. A missing reward is an error, never a default; rewards may be absent from a whole
nemo_aligner file only when the caller says the loss does not read them (``require_rewards=False``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from nemo_rpo.data.errors import DataError
from nemo_rpo.data.jsonl import json_type
from nemo_rpo.data.sources import open_source

FORMATS = ("native", "nemo_aligner", "trl")

Message = dict[str, str]
Prompt = str | list[Message]
Response = str | Message  # a message is one assistant turn, rendered after the prompt by the chat template

# The key that identifies each format when auto-detecting from the first record.
_FORMAT_KEYS = {"native": "responses", "nemo_aligner": "chosen_response", "trl": "chosen"}
_PAIR_FIELDS = {"nemo_aligner": ("chosen_response", "rejected_response"), "trl": ("chosen", "rejected")}
_PAIR_REWARDS = ("chosen_reward", "rejected_reward")
_ABSENT: Any = object()  # "read the field from the record"; JSON null is a value, not absence


@dataclass
class PreferenceRecord:
    """One validated, untokenized record.

    Attributes:
        line: 1-based line in the source file (0-based row of a dataset, ``unit="row"``).
        prompt: The prompt text, or its chat messages.
        responses: K responses, best first: all strings, or all assistant messages.
        rewards: K rewards aligned with ``responses``, or None (trl, and nemo_aligner without rewards).
        response_fields: Where each response came from (``responses[2]``, ``chosen``), for errors.
        id: The record's ``id`` when it has one.
        prompt_field: Where the prompt's messages are (``prompt``; ``chosen`` for an implicit prompt),
            so prompt message ``i`` is ``f"{prompt_field}[{i}]"`` in errors.
        unit: ``line`` or ``row``, for errors.
    """

    line: int
    prompt: Prompt
    responses: list[Response]
    rewards: list[float] | None
    response_fields: list[str]
    id: str | int | None = None
    prompt_field: str = "prompt"
    unit: str = "line"

    def error(self, path: str, field: str, problem: str) -> DataError:
        """A DataError located at this record."""
        return DataError(path, self.line, field, problem, self.unit)


def detect_format(record: dict[str, Any], *, path: str, line: int, unit: str = "line") -> str:
    """The format of ``record``, judged by its keys (``responses``, ``chosen_response``, ``chosen``).

    Raises:
        DataError: No format's key is present.
    """
    for fmt, key in _FORMAT_KEYS.items():
        if key in record:
            return fmt
    raise DataError(path, line, "record",
                    f"cannot detect the format from keys {sorted(record)}; expected 'responses' (native), "
                    "'chosen_response' (nemo_aligner) or 'chosen' (trl)", unit)  # fmt: skip


def parse_record(
    record: dict[str, Any],
    fmt: str,
    *,
    k: int,
    path: str,
    line: int,
    with_rewards: bool = True,
    implicit_prompt: bool = False,
    unit: str = "line",
) -> PreferenceRecord:
    """Validate one record of format ``fmt`` and turn it into a :class:`PreferenceRecord`.

    Args:
        record: The parsed JSON object (or dataset row).
        fmt: One of :data:`FORMATS`.
        k: The configured number of responses per prompt.
        path: Source file, for errors.
        line: Source line (or row), for errors.
        with_rewards: nemo_aligner and native: the record must have its rewards (else it must have
            none; a native file without rewards keeps its responses in file order). trl records never have any.
        implicit_prompt: trl: no ``prompt`` field; it is the shared beginning of ``chosen`` and ``rejected``.
        unit: ``line`` or ``row``, for errors.

    Raises:
        DataError: Naming the first field that is missing, mistyped, empty, non-finite or of the wrong length.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    fields = _Fields(record, path, line, unit)
    if fmt in _PAIR_FIELDS and k != 2:
        raise fields.error("k", f"{fmt} records hold 2 responses, but k={k}; set k=2")
    record_id = fields.id()
    rewards = None
    prompt_field = "prompt"
    if fmt == "trl" and implicit_prompt:
        if "prompt" in record:
            raise fields.error("prompt", "present, but the first record has none (its prompt is implicit); "
                               "give every record a prompt or none")  # fmt: skip
        prompt, responses = fields.implicit_prompt_pair()
        response_fields, prompt_field = ["chosen", "rejected"], "chosen"
    elif fmt == "native":
        prompt = fields.prompt()
        responses = fields.response_list("responses", k)
        response_fields = [f"responses[{i}]" for i in range(k)]
        if with_rewards:
            rewards = fields.reward_list("rewards", k)
            order = sorted(range(k), key=lambda i: -rewards[i])  # stable: ties keep file order
            responses, rewards = [responses[i] for i in order], [rewards[i] for i in order]
            response_fields = [response_fields[i] for i in order]
        elif "rewards" in record:
            raise fields.error(
                "rewards", "present, but the first record has none; give every record rewards or none"
            )
    else:
        prompt = fields.prompt()
        response_fields = list(_PAIR_FIELDS[fmt])
        responses = [fields.response(name) for name in response_fields]
        if fmt == "nemo_aligner" and with_rewards:
            rewards = [fields.reward(name) for name in _PAIR_REWARDS]
        elif fmt == "nemo_aligner":
            for name in _PAIR_REWARDS:
                if name in record:
                    raise fields.error(name, "present, but the first record has no rewards; "
                                       "give every record rewards or none")  # fmt: skip
    fields.check_response_forms(prompt, responses, response_fields)
    return PreferenceRecord(line, prompt, responses, rewards, response_fields, record_id, prompt_field, unit)


def read_preference_records(
    path: str | os.PathLike[str],
    *,
    k: int,
    fmt: str = "auto",
    require_rewards: bool = True,
    split: str = "train",
    renames: dict[str, str] | None = None,
) -> tuple[list[PreferenceRecord], str]:
    """Read and validate every record of a preference JSONL file or Hugging Face dataset.

    Args:
        path: The file or dataset (see :mod:`nemo_rpo.data.sources`).
        k: Responses per prompt; every record must have exactly this many.
        fmt: ``auto`` (detect from the first record) or one of :data:`FORMATS`.
        require_rewards: Whether the caller reads rewards. When False, a nemo_aligner file may have
            none (decided by its first record); when True a missing reward is an error on its line.
        split: The split of a Hugging Face dataset directory.
        renames: ``{column: field}`` applied to each record first (``data.columns``).

    Returns:
        The records in file order and the format they were read as.

    Raises:
        DataError: On the first bad line, a duplicate ``id``, or a file without records.
    """
    source = open_source(path, split=split, renames=renames)
    name, unit = source.path, source.unit
    records: list[PreferenceRecord] = []
    first_line_of_id: dict[str | int, int] = {}
    with_rewards, implicit_prompt = True, False
    for line, obj in source:
        if fmt == "auto":
            fmt = detect_format(obj, path=name, line=line, unit=unit)
        if not records:  # the first record decides for the whole file
            with_rewards = require_rewards or any(name_ in obj for name_ in (*_PAIR_REWARDS, "rewards"))
            implicit_prompt = fmt == "trl" and "prompt" not in obj
        rec = parse_record(obj, fmt, k=k, path=name, line=line, with_rewards=with_rewards,
                           implicit_prompt=implicit_prompt, unit=unit)  # fmt: skip
        if rec.id is not None:
            if rec.id in first_line_of_id:
                raise rec.error(
                    name, "id", f"duplicate {rec.id!r} (first on {unit} {first_line_of_id[rec.id]})"
                )
            first_line_of_id[rec.id] = line
        records.append(rec)
    if not records:
        raise DataError(name, None, "file", "empty dataset (no records)")
    return records, fmt


def implicit_prompt_length(chosen: str, rejected: str) -> int:
    """Length of TRL's implicit prompt of two strings: their shared beginning, less a trailing space."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    return n - 1 if n > 0 and chosen[n - 1] == " " else n


class _Fields:
    """Typed accessors for one record's fields; each raises a DataError naming the field."""

    def __init__(self, record: dict[str, Any], path: str, line: int, unit: str = "line") -> None:
        self.record, self.path, self.line, self.unit = record, path, line, unit

    def error(self, field: str, problem: str) -> DataError:
        return DataError(self.path, self.line, field, problem, self.unit)

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

    def response(self, field: str, value: Any = _ABSENT) -> Response:
        value = self.get(field) if value is _ABSENT else value
        if isinstance(value, list):  # TRL conversational: [{"role": "assistant", "content": ...}]
            if len(value) != 1:
                raise self.error(
                    field, f"expected a string or one assistant message, got {len(value)} messages"
                )
            return self.assistant_message(value[0], f"{field}[0]", field)
        if isinstance(value, dict):  # NeMo-Aligner chat: {"role": "assistant", "content": ...}
            return self.assistant_message(value, field, field)
        if not isinstance(value, str):
            raise self.error(field, f"expected a string, got {json_type(value)}")
        if not value.strip():
            raise self.error(field, "empty")
        return value

    def assistant_message(self, item: Any, where: str, field: str) -> Message:
        """One assistant message at ``where`` (``chosen[0]``); an empty one is reported on ``field``."""
        msg = self.message(item, where)
        if msg["role"] != "assistant":
            raise self.error(f"{where}.role", f"expected 'assistant', got {msg['role']!r}")
        if not msg["content"].strip():
            raise self.error(field, "empty")
        return msg

    def check_response_forms(self, prompt: Prompt, responses: list[Response], fields: list[str]) -> None:
        """All responses strings, or all messages; message responses need a prompt of messages."""
        is_message = [isinstance(r, dict) for r in responses]
        for i in range(1, len(responses)):
            if is_message[i] != is_message[0]:
                first = "an assistant message" if is_message[0] else "a string"
                raise self.error(fields[i], f"expected {first} like {fields[0]}, got "
                                 f"{'a message' if is_message[i] else 'a string'}")  # fmt: skip
        if is_message[0] and isinstance(prompt, str):
            raise self.error(
                fields[0], "an assistant message needs a prompt of messages, got a string prompt"
            )

    def implicit_prompt_pair(self) -> tuple[Prompt, list[Response]]:
        """TRL's implicit prompt: the shared beginning of ``chosen`` and ``rejected`` (module docstring)."""
        chosen, rejected = self.get("chosen"), self.get("rejected")
        for field, value in (("chosen", chosen), ("rejected", rejected)):
            if not isinstance(value, (str, list)):
                raise self.error(field, f"expected a string or a list of messages, got {json_type(value)}")
        if type(chosen) is not type(rejected):
            kind = "a string" if isinstance(chosen, str) else "a list of messages"
            raise self.error("rejected", f"expected {kind} like chosen, got {json_type(rejected)}")
        if isinstance(chosen, str):
            n = implicit_prompt_length(chosen, rejected)
            if not chosen[:n].strip():
                raise self.error(
                    "prompt", "missing, and chosen and rejected share no beginning to take it from"
                )
            responses = []
            for field, value in (("chosen", chosen), ("rejected", rejected)):
                if not value[n:].strip():
                    raise self.error(
                        field, "empty once the prompt it shares with the other response is removed"
                    )
                responses.append(value[n:])
            return chosen[:n], responses
        sides = {field: [self.message(m, f"{field}[{i}]") for i, m in enumerate(value)]
                 for field, value in (("chosen", chosen), ("rejected", rejected))}  # fmt: skip
        n = 0
        while n < min(len(chosen), len(rejected)) and sides["chosen"][n] == sides["rejected"][n]:
            n += 1
        if n == 0:
            raise self.error(
                "prompt", "missing, and chosen and rejected share no leading message to take it from"
            )
        responses = []
        for field, messages in sides.items():
            if len(messages) != n + 1:
                raise self.error(field, f"expected one assistant message after the {n} prompt messages it "
                                 f"shares with the other response, got {len(messages) - n}")  # fmt: skip
            responses.append(self.assistant_message(messages[n], f"{field}[{n}]", field))
        prompt = sides["chosen"][:n]
        if not any(m["content"].strip() for m in prompt):
            raise self.error("prompt", "empty")
        return prompt, responses

    def response_list(self, field: str, k: int) -> list[Response]:
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
