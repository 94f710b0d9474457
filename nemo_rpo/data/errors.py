"""The one error type of the data layer: a bad input, located to a file, line and field."""

from __future__ import annotations


class DataError(Exception):
    """Bad input data, named precisely enough to find and fix it.

    ``str(err)`` is ``<path>:<line>: <field>: <problem>`` (``<path>: <field>: <problem>`` when the
    problem belongs to the whole file, ``line=None``); the CLI prints ``error: `` and that line.
    Records of a Hugging Face dataset are rows, not lines: ``<path>: row <n>: <field>: <problem>``.

    Attributes:
        path: The file (or a ``<name>`` for in-memory sources).
        line: 1-based line number (or 0-based row, ``dataset[n]``), or None when the problem is not on one record.
        field: The record field (``responses[2]``, ``prompt[0].role``) or setting at fault.
        problem: What is wrong, in a few words.
        unit: ``line`` (JSONL) or ``row`` (a Hugging Face dataset).
    """

    def __init__(self, path: str, line: int | None, field: str, problem: str, unit: str = "line") -> None:
        super().__init__(path, line, field, problem, unit)  # keeps the error picklable across processes
        self.path = str(path)
        self.line = line
        self.field = field
        self.problem = problem
        self.unit = unit

    def __str__(self) -> str:
        if self.line is None:
            where = self.path
        else:
            where = (
                f"{self.path}:{self.line}" if self.unit == "line" else f"{self.path}: {self.unit} {self.line}"
            )
        return f"{where}: {self.field}: {self.problem}"
