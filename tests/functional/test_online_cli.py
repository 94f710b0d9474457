"""Online and iterative RPO end to end through the CLI (Alg. 2-4) on CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.functional

HERE = Path(__file__).resolve().parent
TOY = ["reward.judge=toy_judges:vowel_fraction", "online.sft_warmup_steps=0", "generation.max_new_tokens=8"]
# Measured (2-core CPU, seed 1234): mean reward 0.023 over steps 1-5, 0.155 over steps 26-30.
THRESHOLD = 0.05
SMALL = ["trainer.global_batch_size=8", "trainer.micro_batch_size=4", "logging.progress_bar=false",
         "logging.tensorboard=false"]  # fmt: skip


def _train(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "2",
        "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    proc = subprocess.run([sys.executable, "-m", "nemo_rpo.train", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def _metrics(exp_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (exp_dir / "metrics.jsonl").read_text().splitlines()]


def test_online_raises_the_judges_reward(tmp_path):
    """Alg. 2 with rpo_bwd, K=4, from random weights: the toy judge's mean reward climbs."""
    exp = tmp_path / "online"
    # From random weights (no warm-up) the offline learning rate and its cosine schedule, not mode=online's.
    _train("mode=online", f"exp_dir={exp}", "trainer.max_steps=30", "trainer.global_batch_size=16", *TOY,
           "optim.lr=3e-3", "optim.decay_style=cosine", "optim.warmup_steps=5",
           "logging.progress_bar=false", "logging.tensorboard=false")  # fmt: skip
    rows = _metrics(exp)
    assert [r["step"] for r in rows] == list(range(1, 31))
    keys = {
        "reward",
        "reward_std",
        "kl",
        "response_length",
        "time_generate_s",
        "time_score_s",
        "time_train_s",
    }
    assert keys <= rows[0].keys()
    first = sum(r["reward"] for r in rows[:5]) / 5
    last = sum(r["reward"] for r in rows[-5:]) / 5
    assert last > first + THRESHOLD, (first, last)
    assert rows[-1]["kl"] > 0  # the policy moved away from the reference


def test_online_iterations_resume_mid_iteration(tmp_path):
    """Alg. 4 with 2 iterations; a restart inside iteration 2 continues exactly (reference, data, RNG)."""
    common = ["mode=online", "trainer.max_steps=4", "schedule.iterations=2", "checkpoint.save_interval=1",
              "checkpoint.keep_last=4", *TOY, *SMALL]  # fmt: skip
    full, cut = tmp_path / "full", tmp_path / "cut"
    _train(f"exp_dir={full}", *common)
    _train(f"exp_dir={cut}", *common)
    rows = _metrics(full)
    assert [r["iteration"] for r in rows] == [0, 0, 1, 1]
    assert (
        full / "reference" / "checkpoints" / "step_00000002" / "COMPLETE"
    ).is_file()  # pi_ref := pi at step 2
    # Simulate a crash after step 3 (mid iteration 2): drop step 4, point `latest` at step 3, rerun.
    import shutil

    shutil.rmtree(cut / "checkpoints" / "step_00000004")
    (cut / "checkpoints" / "latest").write_text("step_00000003\n")
    proc = _train(f"exp_dir={cut}", *common)
    assert "resumed from" in proc.stdout
    again = _metrics(cut)
    assert [r["step"] for r in again] == [1, 2, 3, 4]
    for key in ("loss", "reward", "kl", "grad_norm"):
        assert abs(again[3][key] - rows[3][key]) < 1e-6, (key, again[3], rows[3])


def test_offline_iterations_regenerate_data(tmp_path):
    """Alg. 3 with 2 iterations: iteration 2 trains on samples of the policy scored by the judge."""
    exp = tmp_path / "iter"
    _train(f"exp_dir={exp}", "trainer.max_steps=4", "schedule.iterations=2", "schedule.beta=[0.1,0.05]",
           "generation.max_new_tokens=12", *SMALL)  # fmt: skip
    rows = _metrics(exp)
    assert [r["iteration"] for r in rows] == [0, 0, 1, 1]
    data = [
        json.loads(line) for line in (exp / "iterations" / "iter_1" / "data.jsonl").read_text().splitlines()
    ]
    assert len(data) > 400 and all(len(r["responses"]) == 4 == len(r["rewards"]) for r in data)
    assert (exp / "iterations" / "iter_1" / "reference_logps.pt").is_file()


def test_online_embedded_task_reports_the_held_out_judge_reward(tmp_path):
    """On the embedded task a run scores greedy answers to held-out prompts with the known judge, before
    training and after, prints both and writes judge_eval.json (the learning a user can check)."""
    exp = tmp_path / "online"
    proc = _train("mode=online", f"exp_dir={exp}", "trainer.max_steps=3", "online.sft_warmup_steps=5", *SMALL)
    judged = json.loads((exp / "judge_eval.json").read_text())
    assert judged["prompts"] == 128 and judged["decoding"] == "greedy"
    assert set(judged["reward_by_step"]) == {"0", "3"}
    assert all(0.0 <= v <= 1.0 for v in judged["reward_by_step"].values())
    assert "held-out judge reward (greedy, 128 prompts): step 0 " in proc.stdout
    # The embedded warm-up imitates a careless demonstrator: one response per prompt, half with a sign-off.
    demos = [json.loads(line) for line in (exp / "data" / "synthetic_sft.jsonl").read_text().splitlines()]
    assert len(demos) == 512 and all(len(d["responses"]) == 1 and "rewards" not in d for d in demos)
    assert 0.4 < sum(d["responses"][0].endswith(" ok!") for d in demos) / len(demos) < 0.6
