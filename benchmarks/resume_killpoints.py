"""Every kill point of the offline exact-resume chain, one at a time (issue 17, item 1).

    python benchmarks/resume_killpoints.py /tmp/killpoints     # ~10 minutes on 2 cores

Runs the uninterrupted 8-step offline run of ``tests/functional/test_exact_resume.py`` once, then for
each kill point a fresh run SIGKILLed there and restarted to the end: after step 1..7 is logged
(wherever the process then is) and inside the save of step 2, 4, 6 (the test's ``_faulty_train.py``).
Prints, per kill point, the checkpoint it resumed from and whether every logged loss, grad norm,
accuracy and lr equals the uninterrupted run's (``==``); exits 1 on any difference.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "functional"))
import test_exact_resume as chain  # noqa: E402 - the test's own launch and kill helpers

KEYS = ("loss", "grad_norm", "accuracy", "lr")


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/resume_killpoints")
    root.mkdir(parents=True, exist_ok=True)
    args = [*chain.SMALL, "trainer.max_steps=8", "logging.tensorboard=false"]
    full = root / "full"
    shutil.rmtree(full, ignore_errors=True)
    assert chain._run(full, args).returncode == 0, "the uninterrupted run failed"
    want, failed = chain._metrics(full), 0
    for kind, step in [("after", k) for k in range(1, 8)] + [("save", k) for k in (2, 4, 6)]:
        cut = root / f"cut_{kind}{step}"
        shutil.rmtree(cut, ignore_errors=True)
        if kind == "after":
            chain._kill_after_step(cut, args, step)
        else:
            chain._run(cut, args, kill_at_save=step)
        latest = cut / "checkpoints" / "latest"
        resumed = latest.read_text().strip() if latest.exists() else "scratch"
        rc = chain._run(cut, args).returncode
        got = chain._metrics(cut)
        bad = [(g["step"], k) for g, w in zip(got, want) for k in KEYS if g[k] != w[k]]
        ok = rc == 0 and len(got) == len(want) and not bad
        failed += not ok
        print(f"kill {kind} step {step}: resumed from {resumed}, {'bitwise equal' if ok else f'DIFFERS {bad[:3]}'}",
              flush=True)  # fmt: skip
    print(f"{10 - failed} of 10 kill points bitwise equal to the uninterrupted run")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
