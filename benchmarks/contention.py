"""Step time of the embedded default with the CPU to itself vs shared with a busy process.

One run measures, for each OpenMP waiting policy, the embedded default (``nemo-rpo-train``, offline
rpo_bwd, 2 threads) idle and then while a synthetic load keeps every core busy (one pure-Python spinning
process per core, started before and stopped after the measured run). It prints the median and the
95th-percentile / worst step time of each and the loaded/idle ratios, so the effect of the policy is a
ratio measured in one run. The first ``--skip`` steps (start-up, first allocation) are left out.

    python benchmarks/contention.py                       # every policy: passive (the launcher's), default, spin10k
    python benchmarks/contention.py --steps 80 --json benchmarks/results/contention-<date>.json

``passive`` is what ``nemo-rpo-train`` sets unless ``OMP_WAIT_POLICY`` is already in the environment
(:mod:`nemo_rpo.cli`); ``default`` is libgomp's own (spin, then sleep), the policy it replaces;
``spin10k`` spins 10,000 times before sleeping.
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

# policy -> extra environment; every policy but "passive" starts with torch imported first, so the
# launcher leaves libgomp as that environment sets it.
POLICIES = {"passive": {}, "default": {}, "spin10k": {"GOMP_SPINCOUNT": "10000"}}


def _spin(stop_at: float) -> None:
    x = 0
    while time.time() < stop_at:
        x += 1


def _run(policy: str, steps: int, exp_dir: Path) -> list[float]:
    """``passive``: the launcher as shipped; ``default``: torch imported first, so libgomp keeps its own
    waiting policy (spin, then sleep) and the launcher changes nothing; ``spin10k``: the same with a
    short spin (``GOMP_SPINCOUNT=10000``) before sleeping."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(OMP_NUM_THREADS="2", **POLICIES[policy])
    args = [f"exp_dir={exp_dir}", f"trainer.max_steps={steps}", "logging.tensorboard=false",
            "logging.progress_bar=false", "checkpoint.save_interval=0"]  # fmt: skip
    if policy == "passive":
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
