"""One checkpoint resumed many times, each in a fresh process (issue 17, item 1: the resume failure).

    python benchmarks/resume_repeat.py --trials 60 runs/resume_repeat
    python benchmarks/resume_repeat.py --source /path/to/old/checkout --source installed --trials 100 runs/ab

The offline run of ``tests/functional/test_exact_resume.py`` (global batch 8, micro-batch 4, a checkpoint
every 2 steps, 2 threads): one uninterrupted 4-step run and one 2-step run, then ``--trials`` times a copy
of the 2-step run resumed to step 4 in a new process, its steps 3-4 compared with the uninterrupted
run's (loss and grad norm, ``==``). The failure that filed issue 17 was of this kind: a resumed process
whose first step differed in the last bit (its cause: ``benchmarks/vml_race.py``). ``--env K=V`` sets a
variable in the resumed processes only. ``--source`` runs another checkout of nemo-rpo (its
``PYTHONPATH``), e.g. the commit before a fix; given more than once, trials alternate between the
checkouts (``installed`` names the installed one). Prints one line per trial and the counts; exits 1
on any difference. Start a load beside it (the failure needs a busy machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "functional"))
import test_exact_resume as chain  # noqa: E402 - the test's own arguments

ARGS = [*chain.SMALL, "logging.tensorboard=false"]


def train(
    exp_dir: Path, steps: int, source: str | None, extra_env: dict[str, str]
) -> list[tuple[float, float]]:
    """``python -m nemo_rpo.train`` to ``steps``; returns every logged (loss, grad_norm)."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", **extra_env}
    if source:
        env["PYTHONPATH"] = f"{source}{os.pathsep}{env.get('PYTHONPATH', '')}"
    with open(exp_dir.with_suffix(".log"), "w") as log:
        subprocess.run([sys.executable, "-m", "nemo_rpo.train", f"exp_dir={exp_dir}", *ARGS,
                        f"trainer.max_steps={steps}"], env=env, stdout=log, stderr=log, check=True,
                       cwd=source or None)  # fmt: skip
    rows = [json.loads(line) for line in (exp_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["loss"], r["grad_norm"]) for r in rows]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root", nargs="?", default="runs/resume_repeat")
    parser.add_argument("--trials", type=int, default=20, help="trials per source")
    parser.add_argument("--source", action="append", default=[],
                        help="a nemo-rpo checkout to run instead of the installed one; given several times "
                             "(\"installed\" names the installed one), trials alternate between them")  # fmt: skip
    parser.add_argument("--env", action="append", default=[], help="K=V for the resumed processes only")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)
    root = Path(args.root)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    sources = [None if s == "installed" else s for s in args.source] or [None]
    names = [s or "installed" for s in sources]
    want, failed = {}, dict.fromkeys(names, 0)
    for i, source in enumerate(sources):
        want[names[i]] = train(root / f"full{i}", 4, source, {})
        train(root / f"two{i}", 2, source, {})
    for trial in range(1, args.trials + 1):
        for i, (source, name) in enumerate(zip(sources, names)):
            resumed = root / f"trial{trial}_{i}"
            shutil.copytree(root / f"two{i}", resumed)
            got = train(resumed, 4, source, extra)
            diffs = [(step, w, g) for step, (w, g) in enumerate(zip(want[name], got), start=1) if w != g]
            failed[name] += bool(diffs) or len(got) != len(want[name])
            load = os.getloadavg()[0]
            print(f"trial {trial} {name}: {'bitwise equal' if not diffs else f'DIFFERS (step, want, got) {diffs}'}"
                  f" (load {load:.1f})", flush=True)  # fmt: skip
            shutil.rmtree(resumed)
    for name in names:
        print(f"{name}: {args.trials - failed[name]} of {args.trials} resumed processes bitwise equal to the "
              "uninterrupted run")  # fmt: skip
    return 1 if any(failed.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
