"""How much the CPU decides a run's numbers, and what ``trainer.deterministic=true`` changes (docs/determinism.md).

    python benchmarks/determinism.py check     # this CPU vs the stored reference (exit 1 if any bit differs)
    python benchmarks/determinism.py check --long   # also 120 steps of each mode vs the recording CPU's isa run
    python benchmarks/determinism.py record    # rewrite the reference (after a change that moves the numbers)
    python benchmarks/determinism.py isa       # this machine posing as other CPUs, default vs deterministic
    python benchmarks/determinism.py cost      # step time, default vs deterministic, alternating rounds

``check`` is the cross-machine test: run it on a CPU other than the one that recorded
``tests/fixtures/deterministic_reference.json`` (its ``numerics.cpu``) and it says whether every logged
number of the 8-step deterministic run is bitwise the same. ``isa`` runs the embedded default under
environments that make this machine's libraries take another CPU's code paths: ATen's kernel level
(``ATEN_CPU_CAPABILITY``), MKL's (``MKL_ENABLE_INSTRUCTIONS``), oneDNN's (``ONEDNN_MAX_CPU_ISA``) and
glibc's (``GLIBC_TUNABLES`` hwcaps: libm's FMA variants), each run with and without
``trainer.deterministic=true``, and compares every step's numbers with the native run of the same mode.
MKL's vendor check (its AMD paths) cannot be posed as: that is what ``check`` on an AMD CPU is for.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_sampling import cpu_name  # benchmarks/ is sys.path[0] when run as a script

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "fixtures" / "deterministic_reference.json"
# The numbers a run logs that the CPU could change (timings and the learning rate aside).
COMPARED = ("loss", "grad_norm", "accuracy", "reward_correlation", "implicit_reward_best", "implicit_reward_worst",
            "implicit_margin", "skipped_steps")  # fmt: skip
REFERENCE_ARGS = ["trainer.deterministic=true", "trainer.max_steps=8"]
# The recording CPU's ``isa`` run: its native step-120 loss of each mode, full precision (``check --long``).
ISA_RESULTS = ROOT / "benchmarks" / "results" / "2026-12-06-determinism-isa.json"

_NO_AVX512 = "glibc.cpu.hwcaps=-AVX512F,-AVX512CD,-AVX512DQ,-AVX512BW,-AVX512VL"
# Environments under which this machine's libraries take the code paths of another CPU.
POSES = {
    "native": {},
    "aten-avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    "avx2-cpu": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                 "GLIBC_TUNABLES": _NO_AVX512},
    "sse4-cpu": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41",
                 "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F,-AVX2,-FMA,-AVX"},
}  # fmt: skip
_OWN_ENV = (
    "ATEN_CPU_CAPABILITY",
    "MKL_CBWR",
    "MKL_ENABLE_INSTRUCTIONS",
    "ONEDNN_MAX_CPU_ISA",
    "GLIBC_TUNABLES",
)


def train(args: list[str], env: dict[str, str], exp_dir: Path, threads: str = "1") -> tuple[list[dict], str]:
    """Run ``python -m nemo_rpo.train`` with ``args`` in a clean ``exp_dir``; its metrics rows and stdout."""
    full_env = {k: v for k, v in os.environ.items() if k not in _OWN_ENV}
    full_env.update(OMP_NUM_THREADS=threads, **env)
    cmd = [sys.executable, "-m", "nemo_rpo.train", f"exp_dir={exp_dir}", "logging.tensorboard=false",
           "logging.progress_bar=false", *args]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(args)} under {env}\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (exp_dir / "metrics.jsonl").read_text().splitlines()]
    return rows, done.stdout


def compare(a: list[dict], b: list[dict]) -> dict:
    """Bitwise equality of the compared numbers, the first step that differs, the largest loss difference."""
    differing = [x["step"] for x, y in zip(a, b) if any(x[k] != y[k] for k in COMPARED)]
    return {
        "bitwise": len(a) == len(b) and not differing,
        "first_differing_step": differing[0] if differing else None,
        "max_abs_loss_diff": max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b)),
        "last_loss": b[-1]["loss"],
    }


def numerics_line(stdout: str) -> str:
    return next((line for line in stdout.splitlines() if line.startswith("deterministic:")), "")


def cmd_record(_: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rows, stdout = train(REFERENCE_ARGS, {}, Path(tmp) / "run")
    ref = {
        "command": "python -m nemo_rpo.train " + " ".join(REFERENCE_ARGS) + " (1 thread)",
        "numerics": numerics_line(stdout),
        "cpu": cpu_name(),
        "recorded": time.strftime("%Y-%m-%d"),
        "steps": [{"step": r["step"], **{k: r[k] for k in COMPARED}} for r in rows],
    }
    REFERENCE.write_text(json.dumps(ref, indent=1) + "\n")
    print(
        f"wrote {REFERENCE.relative_to(ROOT)}: {len(rows)} steps on {ref['cpu']}; last loss {rows[-1]['loss']!r}"
    )


def cmd_check(args: argparse.Namespace) -> None:
    ref = json.loads(REFERENCE.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        rows, stdout = train(REFERENCE_ARGS, {}, Path(tmp) / "run")
    result = compare(ref["steps"], rows)
    print(f"reference: {ref['cpu']} ({ref['recorded']}); this CPU: {cpu_name()}")
    print(numerics_line(stdout))
    for x, y in zip(ref["steps"], rows):
        mark = "same" if all(x[k] == y[k] for k in COMPARED) else "DIFFERS"
        print(f"step {x['step']}: loss {y['loss']!r} (reference {x['loss']!r}) {mark}")
    print("bitwise identical to the reference" if result["bitwise"] else f"DIFFERENT: {result}")
    ok = result["bitwise"]
    if args.long:  # the deterministic mode must match; the default mode is reported (it may differ by CPU)
        isa = json.loads(ISA_RESULTS.read_text())
        for mode, extra in (("default", []), ("deterministic", ["trainer.deterministic=true"])):
            with tempfile.TemporaryDirectory() as tmp:
                rows, _ = train([*extra, f"trainer.max_steps={isa['steps']}"], {}, Path(tmp) / "run")
            theirs = isa["modes"][mode]["native"]["last_loss"]
            same = rows[-1]["loss"] == theirs
            ok = ok and (same or mode == "default")
            print(f"{mode}, {isa['steps']} steps: loss {rows[-1]['loss']!r} ({isa['cpu']}: {theirs!r}) "
                  f"{'same' if same else 'differs'}")  # fmt: skip
    sys.exit(0 if ok else 1)


def cmd_isa(args: argparse.Namespace) -> None:
    results: dict = {"cpu": cpu_name(), "steps": args.steps, "threads": args.threads, "modes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for mode, extra in (("default", []), ("deterministic", ["trainer.deterministic=true"])):
            extra = [*extra, f"trainer.max_steps={args.steps}"]
            if mode == "deterministic":
                extra.append(f"trainer.num_threads={args.threads}")
            native, _ = train(extra, {}, Path(tmp) / f"{mode}-native", threads=str(args.threads))
            table = results["modes"][mode] = {}
            for pose, env in POSES.items():
                rows = native if pose == "native" else train(extra, env, Path(tmp) / f"{mode}-{pose}",
                                                             threads=str(args.threads))[0]  # fmt: skip
                table[pose] = compare(native, rows)
                print(f"{mode:13s} {pose:12s} {table[pose]}", flush=True)
            if mode == "deterministic":  # the thread count is part of the guarantee: show it
                for n in args.other_threads:
                    rows, _ = train(
                        [*extra[:-1], f"trainer.num_threads={n}"], {}, Path(tmp) / f"t{n}", threads=str(n)
                    )
                    table[f"native, {n} threads"] = compare(native, rows)
                    print(f"{mode:13s} {n} threads    {table[f'native, {n} threads']}", flush=True)
    if args.json:
        results["load_average_at_end"] = os.getloadavg()
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


def cmd_cost(args: argparse.Namespace) -> None:
    """Median step time of ``nemo-rpo-train`` (steps after the first ``--skip``), alternating the variants."""
    variants = {"default": [], "deterministic": ["trainer.deterministic=true"]}
    if args.threads > 1:  # the mode's own default is 1 thread; also at the default runs' count
        variants[f"deterministic, {args.threads} threads"] = ["trainer.deterministic=true",
                                                              f"trainer.num_threads={args.threads}"]  # fmt: skip
    medians: dict[str, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name, extra in variants.items():
                rows, _ = train([*extra, f"trainer.max_steps={args.steps}"], {}, Path(tmp) / f"{round_}-{len(extra)}",
                                threads=str(args.threads))  # fmt: skip
                medians[name].append(statistics.median(r["step_time_s"] for r in rows[args.skip :]))
                print(
                    f"round {round_ + 1} {name:26s} median step {medians[name][-1] * 1e3:.1f} ms", flush=True
                )
    base = medians["default"]
    ratios = {name: [m / b for m, b in zip(ms, base)] for name, ms in medians.items() if name != "default"}
    for name, rs in ratios.items():
        print(
            f"{name} / default: per round {', '.join(f'{r:.2f}' for r in rs)}; median {statistics.median(rs):.2f}"
        )
    if args.json:
        out = {"cpu": cpu_name(), "threads_default": args.threads, "steps": args.steps, "skip": args.skip,
               "load_average_at_end": os.getloadavg(), "median_step_s": medians, "ratio_to_default": ratios}  # fmt: skip
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("record").set_defaults(fn=cmd_record)
    check = sub.add_parser("check")
    check.add_argument("--long", action="store_true",
                       help="also the 120-step default and deterministic runs vs the recording CPU's isa run")  # fmt: skip
    check.set_defaults(fn=cmd_check)
    isa = sub.add_parser("isa")
    isa.add_argument("--steps", type=int, default=120)
    isa.add_argument("--threads", type=int, default=1)
    isa.add_argument("--other-threads", type=int, nargs="*", default=[2, 3])
    isa.add_argument("--json")
    isa.set_defaults(fn=cmd_isa)
    cost = sub.add_parser("cost")
    cost.add_argument("--rounds", type=int, default=3)
    cost.add_argument("--steps", type=int, default=120)
    cost.add_argument("--skip", type=int, default=5)
    cost.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the default runs")
    cost.add_argument("--json")
    cost.set_defaults(fn=cmd_cost)
    args = parser.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
