"""Which checkpoint directory counts: completion markers and the ``latest`` file (no processes needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nemo_rpo.training.checkpoint import checkpoint_dir, find_latest_checkpoint, load_checkpoint


def make(exp_dir: Path, step: int, *, complete: bool) -> Path:
    path = checkpoint_dir(exp_dir, step)
    path.mkdir(parents=True)
    if complete:
        (path / "COMPLETE").write_text("{}")
    return path


def test_layout(tmp_path: Path) -> None:
    assert checkpoint_dir(tmp_path, 10) == tmp_path / "checkpoints" / "step_00000010"


def test_no_checkpoints(tmp_path: Path) -> None:
    assert find_latest_checkpoint(tmp_path) is None
    make(tmp_path, 5, complete=False)
    assert find_latest_checkpoint(tmp_path) is None


def test_latest_marker_and_fallbacks(tmp_path: Path) -> None:
    make(tmp_path, 10, complete=True)
    twenty = make(tmp_path, 20, complete=True)
    make(tmp_path, 30, complete=False)  # a save that died before its marker
    (tmp_path / "checkpoints" / ".tmp_step_00000040").mkdir()
    assert find_latest_checkpoint(tmp_path) == twenty  # no `latest` file: highest complete

    latest = tmp_path / "checkpoints" / "latest"
    latest.write_text("step_00000010\n")
    assert find_latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 10)  # the marker is trusted
    latest.write_text("step_00000030\n")
    assert find_latest_checkpoint(tmp_path) == twenty  # ... unless it names an incomplete one
    latest.write_text("step_00000099\n")
    assert find_latest_checkpoint(tmp_path) == twenty  # ... or a pruned one


def test_loading_an_incomplete_checkpoint_fails_early(tmp_path: Path) -> None:
    path = make(tmp_path, 1, complete=False)
    with pytest.raises(FileNotFoundError, match="COMPLETE"):
        load_checkpoint(path, model=[], optimizer=None, scheduler=None)
