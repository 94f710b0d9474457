"""The §6 findings check of the testbed report, on hand-made results (no training)."""

from __future__ import annotations

from nemo_rpo.testbed.report import findings, format_findings


def _ci(mean: float, half: float) -> dict:
    return {"mean": mean, "lo": mean - half, "hi": mean + half}


def _results(means: dict[str, float], half: float = 0.01, kl: dict[str, float] | None = None,
             win: float = 0.75) -> dict:  # fmt: skip
    methods = {
        name: {"test": {"reward": _ci(m, half), "diff_vs_sft": _ci(m - 0.10, half), "win_rate": _ci(win, 0.05)},
               "kl": {"mean": (kl or {}).get(name, 1.0)}, "rm": "learnt" if name.endswith("_learnt") else "gt"}
        for name, m in means.items()
    }  # fmt: skip
    return {"sft": {"test": {"reward": {"mean": 0.10}}}, "methods": methods}


FINDINGS = ["objectives", "number of responses", "online bwd vs sqloo (RLOO)", "online KL", "online vs offline",
            "iterations", "learnt RM"]  # fmt: skip


PAPER_LIKE = {
    "dpo": 0.30, "simpo": 0.31, "rpo_bwd_k2": 0.30, "kto": 0.25, "rpo_sqloo_k2": 0.24, "rpo_bwd_k4": 0.305,
    "rpo_sqloo_k4": 0.245, "online_rpo_bwd_gt": 0.40, "online_rpo_sqloo_gt": 0.38, "online_rpo_bwd_learnt": 0.12,
    "online_rpo_sqloo_learnt": 0.11, "iter_offline_rpo_bwd_it1": 0.30, "iter_offline_rpo_bwd_it2": 0.33,
    "iter_offline_rpo_bwd_it3": 0.35, "iter_online_rpo_bwd_it1": 0.40, "iter_online_rpo_bwd_it2": 0.42,
    "iter_online_rpo_bwd_it3": 0.43,
}  # fmt: skip


def test_paper_like_numbers_reproduce_every_finding():
    out = findings(_results(PAPER_LIKE, kl={"online_rpo_bwd_gt": 0.5, "online_rpo_sqloo_gt": 0.9}))
    assert [f["name"] for f in out] == [*FINDINGS, "beats SFT", "online win-rate"]
    assert all(f["held"] for f in out), format_findings(out)
    assert format_findings(out).count("[reproduced]") == 9


def test_each_finding_can_fail():
    flipped = dict(PAPER_LIKE, kto=0.35, rpo_bwd_k4=0.40, online_rpo_bwd_gt=0.30, online_rpo_sqloo_gt=0.20,
                   iter_online_rpo_bwd_it3=0.41, online_rpo_bwd_learnt=0.29)  # fmt: skip
    flipped["rpo_sqloo_k2"] = 0.105  # its interval [0.095, 0.115] around SFT's 0.10: not above SFT
    out = {f["name"]: f["held"] for f in findings(_results(flipped, kl={"online_rpo_bwd_gt": 2.0}, win=0.65))}
    assert out == {"objectives": False, "number of responses": False, "online bwd vs sqloo (RLOO)": True,
                   "online KL": False, "online vs offline": False, "iterations": False, "learnt RM": False,
                   "beats SFT": False, "online win-rate": False}  # fmt: skip


def _curve(rm: list[float], judge: list[float]) -> list[dict]:
    return [
        {"step": 5 * i, "valid_learnt_reward": a, "valid_reward": b}
        for i, (a, b) in enumerate(zip(rm, judge))
    ]


def test_figure_4_needs_the_rm_to_rise_and_the_judge_to_fall_from_its_peak():
    results = _results({"online_rpo_bwd_learnt": 0.09})
    results["curves"] = {"online_rpo_bwd_learnt": [_curve([0.0, 1.0, 1.5], [0.3, 0.4, 0.2]),
                                                   _curve([0.1, 1.1, 1.4], [0.3, 0.38, 0.25])]}  # fmt: skip
    (fig4,) = [f for f in findings(results) if f["name"] == "figure 4"]
    assert fig4["held"], fig4
    assert abs(fig4["ours"]["online_rpo_bwd_learnt judge peak"] - 0.39) < 1e-12
    assert abs(fig4["ours"]["online_rpo_bwd_learnt judge last"] - 0.225) < 1e-12
    ends_at_peak = _curve([0.1, 1.1, 1.4], [0.3, 0.38, 0.65])
    results["curves"]["online_rpo_bwd_learnt"][1] = ends_at_peak
    assert not [f for f in findings(results) if f["name"] == "figure 4"][0]["held"]
    rm_ends_below_start = _curve([0.1, 1.1, -1.5], [0.3, 0.38, 0.25])
    results["curves"]["online_rpo_bwd_learnt"][1] = rm_ends_below_start
    assert not [f for f in findings(results) if f["name"] == "figure 4"][0]["held"]
