"""MKL's vector math library at its first call from two threads (issue 17, item 1: the resume failure).

    python benchmarks/vml_race.py --trials 150 --load 2 [--json out.json]

Each trial is a fresh process that does what a resumed training process did before the step that
differed: a few products and sums on 2 threads, then RoPE's ``torch.cos`` of a ``[72, 4, 1, 16]`` view
(the shared-prompt layout's frequencies, 4,608 elements: ATen gives each thread 2,304 of them and each
calls MKL's ``vmsCos``), then the same ``cos`` again. A trial *differs* when the two calls disagree; the
error of each against float64 says which one is wrong. Trials alternate between ``plain`` and ``warmed``
(``cpu_support.warm_mkl_vml()`` first: each VML function called once on one thread, as every
``nemo-rpo-*`` run now does). ``--load N`` keeps N busy loops running beside the trials (the failure
was seen on a busy machine); ``--launcher-env`` gives the trials the CLIs' runtime environment. Prints one line per differing trial and the counts; exits 1 if a warmed
trial differs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time

from contention import _spin  # the busy loop of benchmarks/contention.py

from nemo_rpo.distributed.determinism import _cpu_model

CHILD = r"""
import json, sys, torch
from nemo_rpo.distributed.cpu_support import warm_mkl_vml
if sys.argv[1] == "warmed":
    warm_mkl_vml()
torch.set_num_threads(2)
a = torch.randn(256, 256); (a @ a).sum(); (a + 1).sum()
inv = 1.0 / (10000 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16))
pos = torch.arange(4).view(4, 1, 1) * 3 + torch.arange(72.0).view(1, 72, 1)
x = (pos.unsqueeze(-1) * inv.repeat(2).view(1, 1, 1, 16)).transpose(0, 1)   # [72, 4, 1, 16], strides (16, 1152, 16, 1)
first, second = torch.cos(x), torch.cos(x)
exact = torch.cos(x.double())
bad = first != second
print(json.dumps({"differ": int(bad.sum()),
                  "first_err": (first.double() - exact).abs().max().item(),
                  "second_err": (second.double() - exact).abs().max().item()}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=100, help="trials per mode")
    parser.add_argument("--load", type=int, default=2, help="busy loops beside the trials")
    parser.add_argument("--json", help="write every trial's result here")
    parser.add_argument("--launcher-env", action="store_true",
                        help="the trials run with the CLIs' CPU_RUNTIME_ENV (MKL_CBWR=AUTO, OMP_WAIT_POLICY=...)")  # fmt: skip
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    if args.launcher_env:
        from nemo_rpo.cli import CPU_RUNTIME_ENV

        env.update(CPU_RUNTIME_ENV)
    spinners = [multiprocessing.Process(target=_spin, args=(time.time() + 24 * 3600,), daemon=True)
                for _ in range(args.load)]  # fmt: skip
    for p in spinners:
        p.start()
    results: dict[str, list[dict]] = {"plain": [], "warmed": []}
    try:
        for trial in range(1, args.trials + 1):
            for mode in results:
                out = subprocess.run([sys.executable, "-c", CHILD, mode], env=env, capture_output=True, text=True,
                                     check=True).stdout  # fmt: skip
                row = json.loads(out.strip().splitlines()[-1])
                results[mode].append(row)
                if row["differ"]:
                    print(f"trial {trial} {mode}: {row['differ']} elements differ; max error first call "
                          f"{row['first_err']:.2e}, second {row['second_err']:.2e} (load {os.getloadavg()[0]:.1f})",
                          flush=True)  # fmt: skip
    finally:
        for p in spinners:
            p.terminate()
    for mode, rows in results.items():
        print(f"{mode}: {sum(bool(r['differ']) for r in rows)} of {len(rows)} fresh processes gave a first cos "
              "that differs from the second")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"cpu": _cpu_model(), "load": args.load, "launcher_env": args.launcher_env, **results},
                f,
                indent=1,
            )
    return 1 if any(r["differ"] for r in results["warmed"]) else 0


if __name__ == "__main__":
    sys.exit(main())
