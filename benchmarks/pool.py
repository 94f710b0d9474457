"""Pool the same-run rounds of several ``bench_step.py`` results into one speed ratio with a 95% interval.

Each round of ``bench_step.py`` times the megatron RPO step and every other row minutes apart in the same
process (TRL in a subprocess of that round), so a round gives one paired comparison. On a shared machine
one run of 5-8 rounds still moves by +-15% (TRL's own step time swings with its allocator churn); pooling
the rounds of several runs of the same code, and resampling rounds *with their pair*, gives the ratio
and how far it can be trusted. Printed for the row named by ``--row`` (default ``trl``):

* per file: the ratio of the run's round medians (``bench_step.py`` prints the ratio of the medians over
  all timed steps, which differs by a few percent) and its per-round ratios;
* pooled: the ratio of the pooled round medians, the median per-round ratio, the share of rounds at or
  above ``--target``, and a paired bootstrap 95% interval of the ratio of medians (rounds resampled).

The ratio is a speed ratio: ``row s/step / RPO s/step`` (2.0 = megatron RPO takes half the time).

Run::

    python benchmarks/pool.py benchmarks/results/2026-11-29-s8-trl*.json benchmarks/results/2026-11-29-s9-trl*.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path


def load_rounds(path: Path, row: str, mbs: str | None) -> list[tuple[float, float]]:
    """``[(rpo round median, row round median), ...]`` of one ``bench_step.py --json`` file."""
    try:
        results = json.loads(path.read_text())["results"]
        key = mbs if mbs is not None else min(results, key=int)
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.exit(f"error: {path}: not a bench_step.py --json result ({e})")
    if key not in results:
        sys.exit(f"error: {path}: no results for micro-batch size {key} (has {', '.join(results)})")
    res = results[key]
    if row not in res:
        sys.exit(
            f"error: {path}: no '{row}' row (has {', '.join(k for k in res if isinstance(res[k], dict))})"
        )
    return list(zip(res["rpo"]["round_medians"], res[row]["round_medians"], strict=True))


def ratio_of_medians(pairs: list[tuple[float, float]]) -> float:
    return statistics.median(b for _, b in pairs) / statistics.median(a for a, _ in pairs)


def paired_bootstrap(pairs: list[tuple[float, float]], draws: int, seed: int) -> tuple[float, float]:
    """2.5% and 97.5% quantiles of :func:`ratio_of_medians` over rounds resampled with replacement."""
    rng = random.Random(seed)
    stats = sorted(ratio_of_medians(rng.choices(pairs, k=len(pairs))) for _ in range(draws))
    return stats[int(0.025 * draws)], stats[int(0.975 * draws) - 1]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="bench_step.py --json outputs of the same code")
    parser.add_argument("--row", default="trl", help="row to compare with RPO: trl, plain, sft, rpo_whole")
    parser.add_argument(
        "--mbs", default=None, help="micro-batch size key (default: the smallest in each file)"
    )
    parser.add_argument("--target", type=float, default=2.0)
    parser.add_argument("--draws", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    pooled: list[tuple[float, float]] = []
    for path in args.files:
        pairs = load_rounds(path, args.row, args.mbs)
        pooled += pairs
        per = ", ".join(f"{b / a:.2f}" for a, b in pairs)
        print(f"{path.name}: {args.row}/RPO s/step {ratio_of_medians(pairs):.2f} (rounds: {per})")
    per_round = [b / a for a, b in pooled]
    lo, hi = paired_bootstrap(pooled, args.draws, args.seed)
    summary = {
        "rounds": len(pooled),
        "ratio_of_medians": ratio_of_medians(pooled),
        "median_round_ratio": statistics.median(per_round),
        "share_at_target": sum(r >= args.target for r in per_round) / len(per_round),
        "ci95": (lo, hi),
    }
    print(f"pooled, {summary['rounds']} rounds of {len(args.files)} runs: ratio of medians "
          f"{summary['ratio_of_medians']:.2f} (paired bootstrap 95% interval {lo:.2f}-{hi:.2f}); median "
          f"per-round ratio {summary['median_round_ratio']:.2f}; rounds >= {args.target:g}: "
          f"{100 * summary['share_at_target']:.0f}%")  # fmt: skip
    return summary


if __name__ == "__main__":
    main()
