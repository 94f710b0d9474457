"""PNG curves from metrics.jsonl (matplotlib, the ``plot`` extra).

A run is a policy run (offline or online: ``metrics.jsonl`` has implicit-reward metrics, and online
runs add ``reward`` and ``kl``) or a reward-model run (``nemo-rpo-train-rm``: ``score_mean``). Each
kind has its own panels and titles; a panel no run has data for is not drawn.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

POLICY_PANELS = (
    ("loss", "loss"),
    ("reward", "reward of the samples"),
    ("kl", "KL(pi || pi_ref) estimate"),
    ("accuracy", "implicit-reward accuracy"),
    ("reward_correlation", "implicit vs explicit reward corr."),
    ("implicit_margin", "implicit margin (best - worst)"),
    ("grad_norm", "grad norm"),
    ("lr", "learning rate"),
)
RM_PANELS = (
    ("loss", "loss"),
    ("accuracy", "pairwise accuracy"),
    ("score_mean", "mean score"),
    ("score_std", "score std"),
    ("grad_norm", "grad norm"),
    ("lr", "learning rate"),
)


def read_metrics(exp_dir: str | Path) -> list[dict]:
    path = Path(exp_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _panels(runs: dict[str, list[dict]]) -> list[tuple[str, str]]:
    """The panels of these runs' kind that at least one run has a value for."""
    is_rm = {name: any("score_mean" in r for r in rows) for name, rows in runs.items()}
    if len(set(is_rm.values())) > 1:
        raise ValueError(
            "cannot draw reward-model runs "
            f"({', '.join(n for n, rm in is_rm.items() if rm)}) and policy runs "
            f"({', '.join(n for n, rm in is_rm.items() if not rm)}) on the same axes"
        )
    panels = RM_PANELS if any(is_rm.values()) else POLICY_PANELS
    return [(k, t) for k, t in panels if any(r.get(k) is not None for rows in runs.values() for r in rows)]


def draw_runs(exp_dirs: list[str]):
    """One figure, a panel per metric, a line per run; the caller saves and closes it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {str(d): read_metrics(d) for d in exp_dirs}
    panels = _panels(runs)
    if not panels:
        raise ValueError(f"no metrics to plot in {', '.join(runs)}")
    ncols = 4 if len(panels) > 6 else min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.7 * ncols, 3.5 * nrows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        fig.delaxes(ax)
    for ax, (key, title) in zip(axes.flat, panels):
        for exp_dir, rows in runs.items():
            points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            if points:  # markers on short runs: a metric logged once is a point, not an empty panel
                marker = "o" if len(points) <= 30 else None
                ax.plot(*zip(*points), label=Path(exp_dir).name, linewidth=1.2, marker=marker, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    fig.tight_layout()
    return fig


def plot_runs(exp_dirs: list[str], out: str | Path) -> Path:
    """Draw ``exp_dirs`` (see :func:`draw_runs`) into the PNG ``out``. Returns its path."""
    import matplotlib.pyplot as plt

    fig = draw_runs(exp_dirs)
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
