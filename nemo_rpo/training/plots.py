"""PNG curves from metrics.jsonl (matplotlib, the ``plot`` extra)."""

from __future__ import annotations

import json
from pathlib import Path

PANELS = (
    ("loss", "loss"),
    ("accuracy", "implicit-reward accuracy"),
    ("reward_correlation", "implicit vs explicit reward corr."),
    ("implicit_margin", "implicit margin (best - worst)"),
    ("grad_norm", "grad norm"),
    ("lr", "learning rate"),
)


def read_metrics(exp_dir: str | Path) -> list[dict]:
    path = Path(exp_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_runs(exp_dirs: list[str], out: str | Path) -> Path:
    """One figure, a panel per metric, a line per run. Returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    for exp_dir in exp_dirs:
        rows = read_metrics(exp_dir)
        for ax, (key, title) in zip(axes.flat, PANELS):
            points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points), label=Path(exp_dir).name, linewidth=1.2)
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
    axes.flat[0].legend()
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
