"""curves.png panels: online runs show reward and KL; reward-model runs draw no empty panel and say
'pairwise accuracy'. Rows come from the functions that write metrics.jsonl, so the keys are the real ones."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

import pytest

from nemo_rpo.training.logger import step_metrics
from nemo_rpo.training.reward_model import rm_step_metrics

pytest.importorskip("matplotlib")

from nemo_rpo.training.plots import draw_runs, plot_runs  # noqa: E402


def _report(step: int) -> defaultdict:
    rng = random.Random(step)
    report = defaultdict(lambda: rng.uniform(1.0, 2.0))
    # Moments of 4 points (x, y) = (i, i + noise): a finite Pearson correlation.
    xs, ys = range(4), [i + rng.uniform(-0.5, 0.5) for i in range(4)]
    report.update(m_sx=sum(xs), m_sy=sum(ys), m_sxx=sum(x * x for x in xs), m_syy=sum(y * y for y in ys),
                  m_sxy=sum(x * y for x, y in zip(xs, ys)), m_n=4.0, acc_count=4.0, acc_sum=step % 4)  # fmt: skip
    return report


def _write(exp_dir: Path, rows: list[dict]) -> str:
    exp_dir.mkdir()
    (exp_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(exp_dir)


def _offline_rows() -> list[dict]:
    return [step_metrics(s, _report(s), grad_norm=0.5, lr=1e-3, seconds=0.1) for s in range(1, 6)]


def _online_rows() -> list[dict]:
    # online.py's _online_metrics keys, merged into each logged step as the online loop does.
    extra = {"reward": 0.2, "reward_std": 0.1, "kl": 0.5, "response_length": 9.0, "iteration": 1}
    return [{**row, **extra, "reward": 0.2 + 0.01 * row["step"]} for row in _offline_rows()]


def _rm_rows() -> list[dict]:
    return [rm_step_metrics(s, _report(s), grad_norm=0.5, lr=1e-3, seconds=0.1) for s in range(1, 6)]


def _panels(fig) -> dict[str, int]:
    """``{title: points drawn}`` for every panel of the figure."""
    return {ax.get_title(): sum(len(line.get_xdata()) for line in ax.get_lines()) for ax in fig.axes}


def test_online_curves_show_reward_and_kl(tmp_path):
    fig = draw_runs([_write(tmp_path / "online", _online_rows())])
    panels = _panels(fig)
    assert {"reward of the samples", "KL(pi || pi_ref) estimate", "loss", "implicit-reward accuracy"} <= set(
        panels
    )
    assert all(points == 5 for points in panels.values()), panels


def test_offline_curves_have_no_online_panels(tmp_path):
    panels = _panels(draw_runs([_write(tmp_path / "offline", _offline_rows())]))
    assert "implicit-reward accuracy" in panels and "reward of the samples" not in panels
    assert all(points == 5 for points in panels.values()), panels


def test_reward_model_curves_have_no_empty_panel_and_rm_titles(tmp_path):
    fig = draw_runs([_write(tmp_path / "rm", _rm_rows())])
    panels = _panels(fig)
    assert set(panels) == {
        "loss",
        "pairwise accuracy",
        "mean score",
        "score std",
        "grad norm",
        "learning rate",
    }
    assert all(points == 5 for points in panels.values()), panels
    assert len(fig.axes) == len(panels)  # no blank grid cell either


def test_plot_runs_writes_png_and_refuses_mixed_kinds(tmp_path):
    policy, rm = _write(tmp_path / "a", _offline_rows()), _write(tmp_path / "b", _rm_rows())
    out = plot_runs([policy], tmp_path / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="reward-model runs"):
        draw_runs([policy, rm])
