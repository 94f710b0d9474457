"""``nemo-rpo-testbed quick=true`` end to end on CPU: every stage, results.json, the table, the plots."""

import json
import math
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.functional

QUICK_METHODS = ["dpo", "rpo_bwd_k4", "online_rpo_bwd_gt", "online_rpo_sqloo_gt", "online_rpo_bwd_learnt"]
# Measured (2-core Intel Xeon, seed 1), 2026-12-05, after the vocabulary padding left the softmax: the SFT
# policy is stronger (valid reward 0.211, was 0.147) and 15 online steps at the shared lr 1e-3 no longer
# beat it (selected checkpoints: rpo_bwd 0.173, rpo_sqloo 0.204; before the fix 0.214 and 0.238), so
# "online beats SFT" is not asserted here: it is the open target of the alignment issue (docs/learning.md).
# What holds with a wide margin is Figure 4: along online training against the learnt RM, the RM's reward
# of the valid generations rises (1.46 -> 1.85) while the judge's stays below SFT's (0.09-0.12).


def _finite_ci(stat: dict) -> bool:
    return (
        all(math.isfinite(stat[k]) for k in ("mean", "lo", "hi")) and stat["lo"] <= stat["mean"] <= stat["hi"]
    )


def test_quick_testbed(tmp_path):
    exp = tmp_path / "tb"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-m", "nemo_rpo.cli.testbed", "quick=true", f"exp_dir={exp}"],
                          capture_output=True, text=True, timeout=900, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = json.loads((exp / "results.json").read_text())
    assert list(results["methods"]) == QUICK_METHODS
    for s in ("valid", "test", "ood"):
        assert _finite_ci(results["sft"][s]["reward"])
    for name, m in results["methods"].items():
        for s in ("valid", "test", "ood"):
            for metric in ("reward", "win_rate"):
                assert _finite_ci(m[s][metric]), (name, s, metric, m[s][metric])
                assert 0.0 <= m[s][metric]["mean"] <= 1.0
        assert math.isfinite(m["kl"]["mean"]) and m["wall_time_s"] > 0
        assert m["ci_over"] == "prompts" and len(m["per_seed"]) == 1
    sft_valid = results["sft"]["valid"]["reward"]["mean"]
    for curve in results["curves"]["online_rpo_bwd_learnt"]:
        assert all(math.isfinite(p["valid_learnt_reward"]) for p in curve)
        learnt = [p["valid_learnt_reward"] for p in curve]
        assert learnt[-1] > learnt[0], learnt  # the learnt RM's reward rises ...
        assert max(p["valid_reward"] for p in curve) < sft_valid, (
            curve,
            sft_valid,
        )  # ... the judge's does not
    assert (exp / "figure2_online_bwd_vs_sqloo.png").stat().st_size > 0
    assert (exp / "figure4_judge_vs_learnt_rm.png").stat().st_size > 0
    assert "online_rpo_sqloo_gt" in proc.stdout and "95% CIs over prompts" in proc.stdout


def test_bad_override_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "nemo_rpo.cli.testbed", "small.methods=[nope]"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: config: methods: unknown ['nope']"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
