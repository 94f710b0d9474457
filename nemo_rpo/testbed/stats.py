"""Average reward and win-rate with 95% confidence intervals (paper §4.1).

Within a run the interval is over prompts (normal approximation, ``1.96 * sd / sqrt(n)``); across runs
it is over the seeds' means (Student t with ``n - 1`` degrees of freedom), as in Table 2's 8b rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["mean_ci", "seed_ci", "win_rates"]

# Two-sided 97.5% quantiles of Student's t by degrees of freedom (scipy is not a dependency).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def _sd(values: Sequence[float]) -> float:
    n = len(values)
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0


def mean_ci(values: Sequence[float]) -> dict:
    """``{"mean", "lo", "hi"}`` over per-prompt values (normal approximation)."""
    n = len(values)
    mean = sum(values) / n
    half = 1.96 * _sd(values) / math.sqrt(n) if n > 1 else 0.0
    return {"mean": mean, "lo": mean - half, "hi": mean + half}


def seed_ci(means: Sequence[float]) -> dict:
    """``{"mean", "lo", "hi"}`` over per-seed means (t interval; zero width for one seed)."""
    n = len(means)
    mean = sum(means) / n
    half = _T975.get(n - 1, 1.96) * _sd(means) / math.sqrt(n) if n > 1 else 0.0
    return {"mean": mean, "lo": mean - half, "hi": mean + half}


def win_rates(rewards: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """Per prompt: 1 if ``rewards`` beats ``baseline``, 0.5 on a tie, else 0."""
    if len(rewards) != len(baseline):
        raise ValueError(f"win_rates: {len(rewards)} rewards but {len(baseline)} baseline rewards")
    return [1.0 if r > b else 0.5 if r == b else 0.0 for r, b in zip(rewards, baseline)]
