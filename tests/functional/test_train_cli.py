"""End-to-end CLI runs of the embedded default: loss falls, accuracy rises, resume reproduces the run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.functional

QUIET = ["logging.progress_bar=false", "logging.tensorboard=false"]


def _train(*args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run(
        [sys.executable, "-m", "nemo_rpo.train", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _metrics(exp_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (exp_dir / "metrics.jsonl").read_text().splitlines()]


def test_embedded_default_learns(tmp_path):
    exp = tmp_path / "run"
    proc = _train(f"exp_dir={exp}", "trainer.max_steps=40", *QUIET)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _metrics(exp)
    assert [r["step"] for r in rows] == list(range(1, 41))
    assert {"step", "loss", "lr", "grad_norm", "accuracy", "reward_correlation", "tokens_per_s"} <= rows[
        0
    ].keys()
    first, last = rows[:10], rows[-10:]
    mean = lambda rs, key: sum(r[key] for r in rs) / len(rs)  # noqa: E731
    assert mean(last, "loss") < mean(first, "loss") - 0.05
    assert mean(last, "accuracy") > mean(first, "accuracy") + 0.05
    assert (exp / "config.yaml").is_file() and "rpo_bwd" in (exp / "config.yaml").read_text()
    assert (exp / "checkpoints" / "latest").is_file()
    assert (exp / "curves.png").stat().st_size > 10_000
    assert "step    40/40" in proc.stdout
    # The known judge scores greedy answers to held-out prompts before and after (measured: 0.000 -> 0.168).
    judged = json.loads((exp / "judge_eval.json").read_text())["reward_by_step"]
    assert set(judged) == {"0", "40"} and judged["40"] > judged["0"] + 0.05, judged
    assert "held-out judge reward (greedy, 128 prompts): step 0 " in proc.stdout


def test_rerun_resumes_and_matches_uninterrupted(tmp_path):
    """Constant LR so that a shorter first run has the same schedule as the long one."""
    common = ["trainer.global_batch_size=8", "trainer.micro_batch_size=4", "optim.decay_style=constant",
              "optim.warmup_steps=0", "checkpoint.save_interval=3", *QUIET]  # fmt: skip
    full, split = tmp_path / "full", tmp_path / "split"
    assert _train(f"exp_dir={full}", "trainer.max_steps=6", *common).returncode == 0
    assert _train(f"exp_dir={split}", "trainer.max_steps=3", *common).returncode == 0
    proc = _train(f"exp_dir={split}", "trainer.max_steps=6", *common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout
    a, b = _metrics(full), _metrics(split)
    assert [r["step"] for r in b] == list(range(1, 7))
    for ra, rb in zip(a, b):
        assert abs(ra["loss"] - rb["loss"]) < 1e-5, (ra, rb)


def test_bad_data_is_one_line_and_writes_no_checkpoint(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "p", "responses": ["a", "b", "c", "d"], "rewards": [1, 2, 3, 4]}\n'
                    '{"prompt": "q", "responses": ["a", "b", "c", "d"]}\n')  # fmt: skip
    exp = tmp_path / "run"
    proc = _train(f"exp_dir={exp}", f"data.train_path={data}", *QUIET)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {data}:2: rewards: missing (rewards are never defaulted)"
    ]
    assert not (exp / "checkpoints").exists()
