"""``nemo-rpo-testbed quick=true`` end to end on CPU: every stage, results.json, the table, the plots."""

import json
import math
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.functional

QUICK_METHODS = ["dpo", "rpo_bwd_k4", "online_rpo_bwd_gt", "online_rpo_sqloo_gt", "online_rpo_bwd_learnt"]
# What is robust at this size (docs/testbed.md, measured on a 2-core Intel Xeon, seed 1, 2026-12-06, with the
# searched hyper-parameters): 40 online rpo_bwd steps with the judge raise the SFT policy's valid reward from
# 0.567 to 0.686 and win 79.7% [71.0, 88.3] of the test prompts against SFT; against the learnt RM the RM's
# valid reward rises (0.756 -> 0.819) while the judge's ends 0.011 below its peak (0.624 -> 0.613): at this
# size the judge's fall is small, so the test checks only that the RM's reward rises.


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
    online = results["methods"]["online_rpo_bwd_gt"]["test"]
    assert online["win_rate"]["lo"] > 0.5, online  # online rpo-bwd beats SFT, paired over test prompts
    assert online["diff_vs_sft"]["lo"] > 0.0, online
    figure4 = {f["name"]: f for f in results["findings"]}["figure 4: online_rpo_bwd_learnt"]["ours"]
    assert figure4["RM last"] > figure4["RM first"], figure4
    for curve in results["curves"]["online_rpo_bwd_learnt"]:
        assert curve[0]["step"] == 0 and all(math.isfinite(p["valid_learnt_reward"]) for p in curve)
    assert (exp / "figure2_online_bwd_vs_sqloo.png").stat().st_size > 0
    assert (exp / "figure4_judge_vs_learnt_rm.png").stat().st_size > 0
    assert "online_rpo_sqloo_gt" in proc.stdout and "95% CIs over prompts (one seed)" in proc.stdout


def test_bad_override_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "nemo_rpo.cli.testbed", "small.methods=[nope]"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: config: methods: unknown ['nope']"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_search_scores_every_candidate_on_valid_only(tmp_path):
    exp = tmp_path / "search"
    small = ["small.sft_steps=8", "small.offline_steps=4", "small.online_steps=4", "small.save_interval=2",
             "small.online_save_interval=2", "small.num_sft_prompts=64", "small.num_pref_prompts=64",
             "small.num_valid=8", "small.num_test=8", "small.num_ood=8", "small.methods=[dpo,online_rpo_bwd_gt]"]  # fmt: skip
    space = ["search_space.lr=[1e-4,3e-4]", "search_space.beta=[0.1]", "search_space.eta=[10]"]
    proc = subprocess.run([sys.executable, "-m", "nemo_rpo.cli.testbed", "quick=true", "search=true",
                           f"exp_dir={exp}", *small, *space],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "2"})  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = json.loads((exp / "search.json").read_text())
    assert list(out["candidates"]) == ["dpo", "online_rpo_bwd_gt"]
    for name, rows in out["candidates"].items():
        assert [(r["lr"], r["beta"]) for r in rows] == [(1e-4, 0.1), (3e-4, 0.1)]
        best = max(rows, key=lambda r: r["valid_reward"])
        assert out["tuned"][name]["lr"] == best["lr"]
        for r in rows:
            run = exp / "search" / name / "_".join(f"{k}{r[k]:g}" for k in out["tuned"][name])
            selected = json.loads((run / "seed1" / "eval.json").read_text())["selections"][0]
            assert set(selected) == {"step", "kl", "valid"}  # test and OOD never generated during the search
    assert "eta" in out["tuned"]["online_rpo_bwd_gt"] and "eta" not in out["tuned"]["dpo"]
    assert not (exp / "results.json").exists() and "tuned:" in proc.stdout
