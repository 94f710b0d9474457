"""The whole training stack under torchrun: every TP/PP/DP layout gives the TP=1 trajectory.

Each run trains the tiny default model with the RPO bwd loss on K=4 batches through the CLI
(data, reference pass, megatron schedules, DDP, optimizer, checkpointing), so these compare the
numbers a user sees: per-step loss and global gradient norm from metrics.jsonl. The baseline computes
each prompt once for its K responses (``model.share_prompt``, on by default); the ``unshared`` runs
compute every sequence whole and must give the same numbers.
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.distributed

COMMON = [
    "loss=rpo_bwd", "k=4", "trainer.global_batch_size=8", "trainer.micro_batch_size=2",
    "optim.decay_style=constant", "optim.warmup_steps=0",
    "logging.progress_bar=false", "logging.tensorboard=false",
]  # fmt: skip
TOL = 1e-5


def _run(nproc: int, exp_dir, *overrides: str) -> list[dict]:
    return _launch(nproc, exp_dir, *overrides)[0]


def _launch(nproc: int, exp_dir, *overrides: str) -> tuple[list[dict], str]:
    """Train through the CLI; (metrics.jsonl rows, stdout)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "nemo_rpo.train"]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "nemo_rpo.train",
        ]
    proc = subprocess.run(
        [*cmd, f"exp_dir={exp_dir}", *COMMON, *overrides],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = [json.loads(line) for line in (exp_dir / "metrics.jsonl").read_text().splitlines()]
    return rows, proc.stdout


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """TP=1, PP=1, DP=1 for 5 steps."""
    return _run(1, tmp_path_factory.mktemp("tp1"), "trainer.max_steps=5")


def _assert_same(rows, reference, steps):
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    for got, want in zip(rows, reference[:steps]):
        assert abs(got["loss"] - want["loss"]) < TOL, (got, want)
        assert abs(got["grad_norm"] - want["grad_norm"]) < TOL * max(1.0, want["grad_norm"]), (got, want)


@pytest.mark.parametrize(
    "nproc, layout",
    [
        (2, ["parallel.tp=2"]),
        (2, ["parallel.pp=2"]),
        (4, ["parallel.tp=2", "parallel.pp=2"]),
        (2, []),  # DP=2 with the same global batch
        (2, ["parallel.use_distributed_optimizer=true"]),
        (1, ["model.share_prompt=false"]),  # every sequence whole: what prompt sharing must reproduce
        (2, ["parallel.pp=2", "model.share_prompt=false"]),
    ],
    ids=["tp2", "pp2", "tp2pp2", "dp2", "dp2-distopt", "unshared", "pp2-unshared"],
)
def test_layout_matches_tp1(baseline, tmp_path, nproc, layout):
    rows, stdout = _launch(nproc, tmp_path, "trainer.max_steps=3", *layout)
    _assert_same(rows, baseline, 3)
    tp = 2 if "parallel.tp=2" in layout else 1
    pp = 2 if "parallel.pp=2" in layout else 1
    dp = nproc // (tp * pp)
    launcher = "torchrun, master" if nproc > 1 else "single"
    # rank 0 alone states the layout, before anything else the run prints
    assert stdout.count("layout: ") == 1, stdout[:2000]
    assert stdout.startswith(f"layout: world size {nproc} ({launcher}"), stdout[:2000]
    assert f") = tp {tp} x pp {pp} x dp {dp}; global batch 8 = micro batch 2 x dp {dp} x {4 // dp} " in stdout


def test_save_tp2_resume_tp1(baseline, tmp_path):
    """3 steps at TP=2 (checkpoint at step 3), then the same exp_dir at TP=1 to step 5."""
    _run(2, tmp_path, "trainer.max_steps=3", "parallel.tp=2")
    rows, stdout = _launch(1, tmp_path, "trainer.max_steps=5")
    _assert_same(rows, baseline, 5)
    ckpt = tmp_path / "checkpoints" / "step_00000003"
    assert f"resumed from {ckpt} at step 3 (resharded: tp 2->1, pp 1->1, dp 1->1)" in stdout
