"""The §6 findings check of the testbed report, on hand-made results (no training)."""

from __future__ import annotations

from nemo_rpo.testbed.report import findings, format_findings


def _results(means: dict[str, float], half: float = 0.01, kl: dict[str, float] | None = None) -> dict:
    methods = {
        name: {"test": {"reward": {"mean": m, "lo": m - half, "hi": m + half}},
               "kl": {"mean": (kl or {}).get(name, 1.0)}}
        for name, m in means.items()
    }  # fmt: skip
    return {"sft": {"test": {"reward": {"mean": 0.10}}}, "methods": methods}


PAPER_LIKE = {
    "dpo": 0.30, "simpo": 0.31, "rpo_bwd_k2": 0.30, "kto": 0.25, "rpo_sqloo_k2": 0.24, "rpo_bwd_k4": 0.305,
    "rpo_sqloo_k4": 0.245, "online_rpo_bwd_gt": 0.40, "online_rpo_sqloo_gt": 0.38, "online_rpo_bwd_learnt": 0.12,
    "online_rpo_sqloo_learnt": 0.11, "iter_offline_rpo_bwd_it1": 0.30, "iter_offline_rpo_bwd_it2": 0.33,
    "iter_offline_rpo_bwd_it3": 0.35, "iter_online_rpo_bwd_it1": 0.40, "iter_online_rpo_bwd_it2": 0.42,
    "iter_online_rpo_bwd_it3": 0.43,
}  # fmt: skip


def test_paper_like_numbers_reproduce_every_finding():
    out = findings(_results(PAPER_LIKE, kl={"online_rpo_bwd_gt": 0.5, "online_rpo_sqloo_gt": 0.9}))
    assert [f["name"] for f in out] == ["objectives", "number of responses", "online bwd vs sqloo (RLOO)",
                                        "online KL", "online vs offline", "iterations", "learnt RM"]  # fmt: skip
    assert all(f["held"] for f in out), format_findings(out)
    assert format_findings(out).count("[reproduced]") == 7


def test_each_finding_can_fail():
    flipped = dict(PAPER_LIKE, kto=0.35, rpo_bwd_k4=0.40, online_rpo_bwd_gt=0.30, online_rpo_sqloo_gt=0.20,
                   iter_online_rpo_bwd_it3=0.41, online_rpo_bwd_learnt=0.29)  # fmt: skip
    out = {f["name"]: f["held"] for f in findings(_results(flipped, kl={"online_rpo_bwd_gt": 2.0}))}
    assert out == {"objectives": False, "number of responses": False, "online bwd vs sqloo (RLOO)": True,
                   "online KL": False, "online vs offline": False, "iterations": False, "learnt RM": False}  # fmt: skip


def test_findings_need_their_methods():
    out = findings(
        _results({"dpo": 0.3, "rpo_bwd_k4": 0.3, "online_rpo_bwd_gt": 0.4, "online_rpo_sqloo_gt": 0.3})
    )
    assert [f["name"] for f in out] == ["online bwd vs sqloo (RLOO)", "online KL"]
