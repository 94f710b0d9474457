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


def _curve(rm: list[float], judge: list[list[float]]) -> list[dict]:
    """A learnt-RM run's valid curve: the RM's mean and the judge's per-prompt rewards at steps 0, 5, 10, ..."""
    return [
        {"step": 5 * i, "valid_learnt_reward": a, "valid_reward": sum(b) / len(b), "valid_rewards": b}
        for i, (a, b) in enumerate(zip(rm, judge))
    ]


def _figure4(results: dict) -> dict:
    (fig4,) = [f for f in findings(results) if f["name"] == "figure 4: online_rpo_bwd_learnt"]
    return fig4


def test_figure_4_needs_the_rm_to_rise_and_the_judge_to_fall_from_its_peak():
    results = _results({"online_rpo_bwd_learnt": 0.09})
    rises_then_falls = [[0.3, 0.2, 0.4, 0.3], [0.4, 0.5, 0.4, 0.3], [0.2, 0.3, 0.1, 0.2]]
    results["curves"] = {"online_rpo_bwd_learnt": [_curve([0.0, 1.0, 1.5], rises_then_falls),
                                                   _curve([0.1, 1.1, 1.4], rises_then_falls)]}  # fmt: skip
    fig4 = _figure4(results)
    assert fig4["held"], fig4
    ours = fig4["ours"]
    assert ours["judge peak step"] == 5 and abs(ours["judge peak"] - 0.4) < 1e-12
    assert abs(ours["judge last"] - 0.2) < 1e-12
    assert abs(ours["RM at judge peak"] - 1.05) < 1e-12 and abs(ours["RM last"] - 1.45) < 1e-12
    # The paired differences (last - peak): -0.2, -0.2, -0.3, -0.1 in each seed, mean -0.2.
    assert abs((ours["judge last-peak lo"] + ours["judge last-peak hi"]) / 2 + 0.2) < 1e-12
    assert ours["judge last-peak hi"] < 0


def test_figure_4_fails_when_the_judge_ends_at_its_peak_the_fall_is_noise_or_the_rm_stops_rising():
    results = _results({"online_rpo_bwd_learnt": 0.09})
    ends_at_peak = [[0.3, 0.2, 0.4, 0.3], [0.4, 0.5, 0.4, 0.3], [0.5, 0.6, 0.5, 0.4]]
    results["curves"] = {"online_rpo_bwd_learnt": [_curve([0.0, 1.0, 1.5], ends_at_peak)]}
    assert not _figure4(results)["held"]
    # Last below peak on the mean, but the prompts disagree: the paired interval includes 0.
    noisy_fall = [[0.3, 0.2, 0.4, 0.3], [0.4, 0.5, 0.4, 0.3], [0.9, 0.0, 0.6, 0.0]]
    results["curves"] = {"online_rpo_bwd_learnt": [_curve([0.0, 1.0, 1.5], noisy_fall)]}
    fig4 = _figure4(results)
    assert fig4["ours"]["judge last"] < fig4["ours"]["judge peak"]
    assert not fig4["held"], fig4
    falls = [[0.3, 0.2, 0.4, 0.3], [0.4, 0.5, 0.4, 0.3], [0.2, 0.3, 0.1, 0.2]]
    results["curves"] = {
        "online_rpo_bwd_learnt": [_curve([0.0, 1.0, 0.9], falls)]
    }  # the RM falls after the peak
    assert not _figure4(results)["held"]
    older = [
        {k: v for k, v in point.items() if k != "valid_rewards"} for point in _curve([0.0, 1.0, 1.5], falls)
    ]
    results["curves"] = {"online_rpo_bwd_learnt": [older]}  # evaluated before per-prompt rewards were kept
    assert not _figure4(results)["held"]
