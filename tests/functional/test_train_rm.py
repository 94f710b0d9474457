"""End-to-end ``nemo-rpo-train-rm``: the default run learns, a rerun resumes exactly, the RM serves.

Thresholds leave margin below the measured default run (benchmarks/README.md, "Reward model"): train
accuracy over the first / last 10 steps 0.606 / 0.757, loss 0.678 / 0.480; held-out pair accuracy 0.663
(chance 0.5). Subprocess timeouts are generous: the run takes ~30 s on an idle 2-core machine, minutes on
a loaded one.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.functional

QUIET = ["logging.progress_bar=false", "logging.tensorboard=false"]

# Scores held-out synthetic prompts (another seed) with the trained RM; prints one JSON line.
HELDOUT = """
import json, sys, torch
from nemo_rpo.data.synthetic import make_synthetic_preferences
from nemo_rpo.distributed.launch import teardown_distributed
from nemo_rpo.rewards.megatron_rm import MegatronRewardModel
if __name__ == "__main__":
    records = make_synthetic_preferences(128, 4, seed=1)
    rm = MegatronRewardModel(sys.argv[1], micro_batch_size=64)
    prompts = [r["prompt"] for r in records for _ in r["responses"]]
    scores = rm.score(prompts, [x for r in records for x in r["responses"]])
    again = rm.score(prompts[:7], [x for r in records for x in r["responses"]][:7])
    grid, rewards = scores.view(-1, 4), torch.tensor([r["rewards"] for r in records])
    pairs = rewards.unsqueeze(-1) > rewards.unsqueeze(-2)
    correct = pairs & (grid.unsqueeze(-1) > grid.unsqueeze(-2))
    print(json.dumps({"pair_accuracy": (correct.sum() / pairs.sum()).item(), "step": rm.step,
                      "dtype": str(scores.dtype), "n": scores.numel(),
                      "batch_invariant": bool(torch.allclose(again, scores[:7], atol=1e-5))}))
    teardown_distributed()
"""


def _run(args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env)


def _train(*args: str) -> subprocess.CompletedProcess:
    return _run(["-m", "nemo_rpo.cli.train_rm", *args])


def _metrics(exp_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (exp_dir / "metrics.jsonl").read_text().splitlines()]


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def test_default_run_learns_and_serves(tmp_path):
    exp = tmp_path / "rm"
    proc = _train(f"exp_dir={exp}", *QUIET)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _metrics(exp)
    steps = len(rows)
    assert [r["step"] for r in rows] == list(range(1, steps + 1)) and steps >= 40
    assert {"step", "loss", "accuracy", "lr", "grad_norm"} <= rows[0].keys()
    first, last = rows[:10], rows[-10:]
    assert abs(_mean(first, "loss") - 0.69) < 0.05  # log 2 at a near-zero init
    assert _mean(last, "loss") < _mean(first, "loss") - 0.05
    assert _mean(last, "accuracy") > 0.6 and _mean(last, "accuracy") > _mean(first, "accuracy") + 0.04
    assert "bradley_terry" in (exp / "config.yaml").read_text()
    assert (exp / "checkpoints" / "latest").is_file()

    script = tmp_path / "heldout.py"
    script.write_text(HELDOUT)
    served = _run([str(script), str(exp)])
    assert served.returncode == 0, served.stderr[-3000:]
    result = json.loads(served.stdout.strip().splitlines()[-1])
    assert (result["step"], result["n"], result["dtype"]) == (steps, 512, "torch.float32")
    assert result["batch_invariant"]
    assert result["pair_accuracy"] > 0.6, result  # chance is 0.5


def test_rerun_resumes_and_matches_uninterrupted(tmp_path):
    """Regression objective (the other one), constant LR so a shorter first run has the same schedule."""
    common = ["objective=regression", "trainer.global_batch_size=8", "trainer.micro_batch_size=4",
              "optim.decay_style=constant", "optim.warmup_steps=0", "checkpoint.save_interval=3", *QUIET]  # fmt: skip
    full, split = tmp_path / "full", tmp_path / "split"
    assert _train(f"exp_dir={full}", "trainer.max_steps=6", *common).returncode == 0
    assert _train(f"exp_dir={split}", "trainer.max_steps=3", *common).returncode == 0
    proc = _train(f"exp_dir={split}", "trainer.max_steps=6", *common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout and "at step 3" in proc.stdout
    a, b = _metrics(full), _metrics(split)
    assert [r["step"] for r in b] == list(range(1, 7))
    for ra, rb in zip(a, b):
        assert abs(ra["loss"] - rb["loss"]) < 1e-5, (ra, rb)
    # A squared error against rewards in [0, 1], not Bradley-Terry's log 2.
    assert abs(a[0]["loss"] - 0.6931) > 0.05


def test_bad_objective_is_one_line(tmp_path):
    proc = _train(f"exp_dir={tmp_path / 'x'}", "objective=hinge")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: config: objective: unknown objective 'hinge'; choose one of bradley_terry, regression"
    ]
