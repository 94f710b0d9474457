"""The one error type of the data layer: a bad input, located to a file, line and field."""

from __future__ import annotations


class DataError(Exception):
    """Bad input data, named precisely enough to find and fix it.

    ``str(err)`` is ``<path>:<line>: <field>: <problem>`` (``<path>: <field>: <problem>`` when the
    problem belongs to the whole file, ``line=None``); the CLI prints ``error: `` and that line.

    Attributes:
        path: The file (or a ``<name>`` for in-memory sources).
        line: 1-based line number, or None when the problem is not on one line.
        field: The record field (``responses[2]``, ``prompt[0].role``) or setting at fault.
        problem: What is wrong, in a few words.
    """

    def __init__(self, path: str, line: int | None, field: str, problem: str) -> None:
        super().__init__(path, line, field, problem)  # keeps the error picklable across processes
        self.path = str(path)
        self.line = line
        self.field = field
        self.problem = problem

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.field}: {self.problem}"
