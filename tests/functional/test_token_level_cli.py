"""Token-level RPO end to end (docs/token_level.md): with ``loss.token_decay=0`` the CLI run reproduces
``loss=rpo_bwd`` step for step, through the per-token reference table and the loss adapter."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.functional

COMMON = ["k=4", "trainer.max_steps=3", "trainer.global_batch_size=8", "trainer.micro_batch_size=4",
          "logging.progress_bar=false", "logging.tensorboard=false"]  # fmt: skip


def _losses(exp_dir, *args: str) -> list[tuple[float, float]]:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-m", "nemo_rpo.train", f"exp_dir={exp_dir}", *COMMON, *args],
                          capture_output=True, text=True, timeout=400, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (exp_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["loss"], r["grad_norm"]) for r in rows]


def test_token_decay_0_reproduces_rpo_bwd(tmp_path):
    seq = _losses(tmp_path / "seq", "loss=rpo_bwd")
    tok = _losses(tmp_path / "tok", "loss=rpo_token_bwd", "loss.token_decay=0")
    assert len(seq) == len(tok) == 3
    for (a, ga), (b, gb) in zip(seq, tok):  # float32 sums in another order: measured 1.5e-8
        assert abs(a - b) < 1e-6 and abs(ga - gb) < 1e-6, (seq, tok)
    spread = _losses(tmp_path / "spread", "loss=rpo_token_bwd", "loss.token_decay=1")
    # At step 1 pi = pi_ref: every prefix sum is 0, so every depth has the same loss, but not the same
    # per-token gradients (token s gets sum_{t >= s} w_t of the scale); later steps differ in loss too.
    assert abs(spread[0][0] - seq[0][0]) < 1e-6 and abs(spread[0][1] - seq[0][1]) > 1e-3
    assert abs(spread[2][0] - seq[2][0]) > 1e-4  # measured 7.0e-4 (warm-up steps); decay 0: < 1e-6
