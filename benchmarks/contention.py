"""Step time of the embedded default with the CPU to itself vs shared with a busy process.

One run measures, for each OpenMP waiting policy, the embedded default (``nemo-rpo-train``, offline
rpo_bwd, 2 threads) idle and then while a synthetic load keeps every core busy (one pure-Python spinning
process per core, started before and stopped after the measured run). It prints the median and the
95th-percentile / worst step time of each and the loaded/idle ratios, so the effect of the policy is a
ratio measured in one run. The first ``--skip`` steps (start-up, first allocation) are left out.

    python benchmarks/contention.py                       # every policy below
    python benchmarks/contention.py --policies launcher passive --json benchmarks/results/contention-<date>.json

``launcher`` is what ``nemo-rpo-train`` sets where the environment has no value
(:data:`nemo_rpo.cli.CPU_RUNTIME_ENV`). The others start with torch imported first, so the launcher
leaves libgomp as their environment sets it: ``default`` is libgomp's own (spin ~300,000 times, then
sleep), ``passive`` sleeps at once (``OMP_WAIT_POLICY=PASSIVE``, the launcher's setting before
2026-12-06 session 17), ``spinN`` spins N times before sleeping (``GOMP_SPINCOUNT``; libgomp counts
~100,000 spins per millisecond).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_sampling import cpu_name  # benchmarks/ is sys.path[0] when run as a script

# policy -> extra environment; every policy but "launcher" starts with torch imported first, so the
# launcher leaves libgomp as that environment sets it.
POLICIES = {
    "launcher": {},
    "default": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "spin1k": {"GOMP_SPINCOUNT": "1000"},
    "passive1k": {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "1000"},
    "spin3k": {"GOMP_SPINCOUNT": "3000"},
    "spin10k": {"GOMP_SPINCOUNT": "10000"},
}


def _spin(stop_at: float) -> None:
    x = 0
    while time.time() < stop_at:
        x += 1


def _run(policy: str, steps: int, exp_dir: Path) -> list[float]:
    """``launcher``: ``nemo-rpo-train`` as shipped; any other policy: torch imported first, so the launcher
    changes nothing and libgomp runs with the policy's environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(OMP_NUM_THREADS="2", **POLICIES[policy])
    args = [f"exp_dir={exp_dir}", f"trainer.max_steps={steps}", "logging.tensorboard=false",
            "logging.progress_bar=false", "checkpoint.save_interval=0"]  # fmt: skip
    if policy == "launcher":
        cmd = [sys.executable, "-m", "nemo_rpo.train", *args]
    else:
        launch = "import sys, runpy, torch; sys.argv = ['nemo_rpo.train', *sys.argv[1:]]; " \
                 "runpy.run_module('nemo_rpo.train', run_name='__main__')"  # fmt: skip
        cmd = [sys.executable, "-c", launch, *args]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rows = [json.loads(line) for line in (exp_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step_time_s"] for r in rows]


def _summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "median_s": statistics.median(ordered),
        "p95_s": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
        "max_s": ordered[-1],
        "total_s": sum(ordered),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--skip", type=int, default=5, help="first steps left out (start-up)")
    parser.add_argument("--load", type=int, default=os.cpu_count() or 2, help="spinning processes")
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for policy in args.policies:
            for loaded in (False, True):
                spinners = []
                if loaded:
                    stop_at = time.time() + 3600
                    spinners = [
                        mp.Process(target=_spin, args=(stop_at,), daemon=True) for _ in range(args.load)
                    ]
                    for p in spinners:
                        p.start()
                try:
                    times = _run(policy, args.steps, Path(tmp) / f"{policy}_{int(loaded)}")[args.skip :]
                finally:
                    for p in spinners:
                        p.terminate()
                        p.join()
                results.setdefault(policy, {})["loaded" if loaded else "idle"] = _summary(times)

    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; load: {args.load} spinning processes; "
          f"steps {args.skip + 1}-{args.steps} of the embedded default")  # fmt: skip
    print(f"{'policy':8} {'state':7} {'median s':>9} {'p95 s':>8} {'max s':>8} {'total s':>8}")
    for policy, states in results.items():
        for state, s in states.items():
            print(
                f"{policy:8} {state:7} {s['median_s']:9.4f} {s['p95_s']:8.4f} {s['max_s']:8.3f} {s['total_s']:8.2f}"
            )
        idle, loaded = states["idle"], states["loaded"]
        states["ratio"] = {k: loaded[k] / idle[k] for k in ("median_s", "p95_s", "max_s", "total_s")}
        r = states["ratio"]
        print(f"{policy:8} loaded/idle: median {r['median_s']:.2f}x, p95 {r['p95_s']:.2f}x, "
              f"max {r['max_s']:.2f}x, total {r['total_s']:.2f}x")  # fmt: skip
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"cpu": cpu_name(), "cores": os.cpu_count(), "load": args.load, "steps": args.steps,
                   "skip": args.skip, "results": results}  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
