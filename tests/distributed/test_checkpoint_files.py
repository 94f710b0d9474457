"""Which checkpoint directory counts: completion markers, their file manifests and ``latest`` (no processes)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

from nemo_rpo.data.errors import DataError
from nemo_rpo.training.checkpoint import (
    checkpoint_dir,
    checkpoint_layout,
    find_checkpoint_problem,
    find_latest_checkpoint,
    load_checkpoint,
)  # fmt: skip


def make(exp_dir: Path, step: int, *, complete: bool) -> Path:
    """A checkpoint directory with two files and, when ``complete``, a marker listing them (as a save writes)."""
    path = checkpoint_dir(exp_dir, step)
    (path / "rng").mkdir(parents=True)
    (path / "__0_0.distcp").write_bytes(b"tensor bytes")
    (path / "rng" / "rank_00000.pt").write_bytes(b"rng state")
    if complete:
        files = {
            rel: {
                "size": (path / rel).stat().st_size,
                "sha256": hashlib.sha256((path / rel).read_bytes()).hexdigest(),
            }
            for rel in ("__0_0.distcp", "rng/rank_00000.pt")
        }
        marker = {"step": step, "world_size": 2, "tp": 2, "pp": 1, "dp": 1, "files": files}
        (path / "COMPLETE").write_text(json.dumps(marker))
    return path


def test_layout(tmp_path: Path) -> None:
    assert checkpoint_dir(tmp_path, 10) == tmp_path / "checkpoints" / "step_00000010"
    assert checkpoint_layout(make(tmp_path, 1, complete=True)) == {"world_size": 2, "tp": 2, "pp": 1, "dp": 1}


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


@pytest.mark.parametrize(
    "tear, problem",
    [
        (
            lambda p: (p / "__0_0.distcp").write_bytes(b"tensor"),
            "__0_0.distcp has 6 bytes, the manifest says 12",
        ),
        (lambda p: (p / "rng" / "rank_00000.pt").unlink(), "rng/rank_00000.pt is missing"),
        (
            lambda p: (p / "__0_0.distcp").write_bytes(b"tensor BYTES"),
            "__0_0.distcp does not match its SHA-256",
        ),
        (lambda p: (p / "COMPLETE").write_text('{"step": 2'), "unreadable COMPLETE marker"),
    ],
    ids=["truncated", "missing", "changed", "marker"],
)
def test_a_torn_checkpoint_is_never_chosen(tmp_path: Path, caplog, tear, problem) -> None:
    one = make(tmp_path, 1, complete=True)
    two = make(tmp_path, 2, complete=True)
    (tmp_path / "checkpoints" / "latest").write_text("step_00000002\n")
    assert find_checkpoint_problem(two) is None
    tear(two)
    assert problem in find_checkpoint_problem(two)
    with caplog.at_level(logging.WARNING, logger="nemo_rpo.training.checkpoint"):
        assert find_latest_checkpoint(tmp_path) == one
    assert "step_00000002" in caplog.text and problem in caplog.text


def test_loading_an_incomplete_or_torn_checkpoint_fails_early(tmp_path: Path) -> None:
    path = make(tmp_path, 1, complete=False)
    with pytest.raises(FileNotFoundError, match="COMPLETE"):
        load_checkpoint(path, model=[], optimizer=None, scheduler=None)
    path = make(tmp_path, 2, complete=True)
    (path / "__0_0.distcp").write_bytes(b"")
    with pytest.raises(
        DataError, match=r"step_00000002: checkpoint: torn or corrupted: __0_0.distcp has 0 bytes"
    ):
        load_checkpoint(path, model=[], optimizer=None, scheduler=None)
