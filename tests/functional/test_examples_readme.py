"""Every file under examples/data has a README command, and that command trains as written.

The commands run in-process (``nemo_rpo.cli.train.main``, what ``nemo-rpo-train`` calls) from a scratch
directory holding a link to ``examples/``, so their relative paths and ``exp_dir=runs/...`` resolve as
they would from the repository root without writing into the checkout.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from nemo_rpo.cli.train import main

pytestmark = pytest.mark.functional

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p.name for p in (ROOT / "examples" / "data").iterdir() if p.is_file())


def _readme_commands() -> dict[str, list[str]]:
    """``{example file: argv}`` for each README line ``nemo-rpo-train data.train_path=examples/data/...``."""
    commands = {}
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("nemo-rpo-train ") and "data.train_path=examples/data/" in line:
            argv = shlex.split(line, comments=True)[1:]
            path = next(a for a in argv if a.startswith("data.train_path="))
            commands[path.rsplit("/", 1)[1]] = argv
    return commands


def test_every_example_file_has_a_readme_command():
    assert EXAMPLES and sorted(_readme_commands()) == EXAMPLES


@pytest.mark.parametrize("name", EXAMPLES)
def test_readme_command_trains_as_written(tmp_path, monkeypatch, name):
    argv = _readme_commands()[name]
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    try:
        main(list(argv))
    except SystemExit as exit_:
        pytest.fail(f"nemo-rpo-train {shlex.join(argv)} exited with {exit_.code}")
    exp_dir = tmp_path / next(a.split("=", 1)[1] for a in argv if a.startswith("exp_dir="))
    max_steps = int(next(a.split("=", 1)[1] for a in argv if a.startswith("trainer.max_steps=")))
    rows = [json.loads(line) for line in (exp_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, max_steps + 1))
    assert all(r["loss"] is not None for r in rows)
