"""Run logging: one console line, ``<exp_dir>/metrics.jsonl`` and TensorBoard per logged step.

Metrics are reduced over the whole global batch before they get here, so the logging rank (the
last rank, as in Megatron-LM: it holds the last pipeline stage) sees the same numbers as any other.
"""

from __future__ import annotations

import json
import math
import os
import string
from pathlib import Path

from nemo_rpo.losses import pearson_from_moments


def step_metrics(step: int, report: dict[str, float], grad_norm: float, lr: float, seconds: float) -> dict:
    """Turn a summed step report into the logged metrics (one JSON object)."""
    prompts = max(report["num_prompts"], 1.0)
    moments = [report[k] for k in ("m_sx", "m_sy", "m_sxx", "m_syy", "m_sxy", "m_n")]
    metrics = {
        "step": step,
        "loss": report["loss_sum"] / prompts,
        "lr": lr,
        "grad_norm": grad_norm,
        "accuracy": report["acc_sum"] / report["acc_count"] if report["acc_count"] else float("nan"),
        "reward_correlation": pearson_from_moments(moments),
        "implicit_reward_best": report["implicit_best_sum"] / prompts,
        "implicit_reward_worst": report["implicit_worst_sum"] / prompts,
        "implicit_margin": report["margin_sum"] / prompts,
        "tokens_per_s": report["num_tokens"] / seconds if seconds > 0 else float("nan"),
        "step_time_s": seconds,
    }
    # JSON has no NaN: keep the key, write null.
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}


class MetricsLogger:
    """Appends to metrics.jsonl, mirrors to TensorBoard; a no-op on ranks that do not log."""

    def __init__(self, exp_dir: str, *, enabled: bool, tensorboard: bool, resume_step: int = 0) -> None:
        self.enabled = enabled
        self.path = Path(exp_dir) / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(resume_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(
                    log_dir=str(Path(exp_dir) / "tensorboard"), purge_step=resume_step + 1
                )
            except ImportError:  # tensorboard is the `logging` extra
                print("warning: tensorboard is not installed; metrics go to metrics.jsonl only")

    def _truncate_after(self, step: int) -> None:
        """A resumed run re-logs the steps after its checkpoint: drop the old lines for them.

        A line that does not parse is the torn end of a run killed mid-write; it is dropped too.
        """
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if _logged_step(line) <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def log(self, metrics: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        if self._tb is not None:
            for key, value in metrics.items():
                if key != "step" and value is not None:
                    self._tb.add_scalar(f"train/{key}", value, metrics["step"])

    def close(self) -> None:
        """Flush TensorBoard and draw ``<exp_dir>/curves.png`` when matplotlib is installed."""
        if self._tb is not None:
            self._tb.close()
        if not self.enabled or not self.path.exists() or not self.path.stat().st_size:
            return  # nothing logged, nothing to draw
        try:
            from nemo_rpo.training.plots import plot_runs

            plot_runs([str(self.path.parent)], self.path.parent / "curves.png")
        except ImportError:
            pass


def _logged_step(line: str) -> float:
    """The ``step`` of a metrics.jsonl line; infinity for a blank or torn line (so it is never kept)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


# What a policy run prints per logged step after ``step N/T``; None (a NaN written as null) prints "nan".
POLICY_LINE = ("loss {loss:.4f} | acc {accuracy:.3f} | corr {reward_correlation:.3f} | margin {implicit_margin:.3f} | "
               "lr {lr:.2e} | grad_norm {grad_norm:.3f} | {tokens_per_s:.0f} tok/s")  # fmt: skip


class _NanFormatter(string.Formatter):
    def get_value(self, key, args, kwargs):  # noqa: ANN001, ANN201 - string.Formatter's signature
        return kwargs.get(key)

    def format_field(self, value, format_spec: str) -> str:  # noqa: ANN001
        return "nan" if value is None else super().format_field(value, format_spec)


def console_line(metrics: dict, max_steps: int, template: str = POLICY_LINE) -> str:
    """``step N/T | ...``: ``template``'s fields filled from ``metrics`` (missing or null ones print nan)."""
    return f"step {metrics['step']:>5d}/{max_steps} | " + _NanFormatter().format(template, **metrics)
