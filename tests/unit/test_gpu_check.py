"""``benchmarks/gpu_check.sh --dry-run`` (issue 20, item 7): the GPU check's CPU-independent parts run.

A tiny model on the CPU, one bf16 step per spec that imports, one sampling round; the script must save a
log and a JSON record with a training row (finite loss, positive time) and a sampling row."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run_saves_its_rows(tmp_path: Path) -> None:
    out = tmp_path / "check"
    env = dict(os.environ, GPU_CHECK_OUT=str(out), OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    record = json.loads(out.with_suffix(".json").read_text())
    train = record["rows"]["train_local"]
    assert train["s_per_step"] > 0 and all(math.isfinite(x) for x in train["losses"])
    assert "train_te" in record["rows"] and record["rows"]["sample"]["tokens_per_s"] > 0
    log = out.with_suffix(".log").read_text()
    assert "train (local spec)" in log and "sample (local spec, KV cache)" in log
