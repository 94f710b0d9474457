"""Test-only launcher: ``nemo-rpo-train`` that dies mid-save, as a SIGKILL there would leave it.

    python tests/functional/_faulty_train.py --kill-at-save STEP [nemo-rpo-train overrides ...]

Adds a :data:`nemo_rpo.training.checkpoint.BEFORE_COMMIT` callback that ends the process with
``os._exit(137)`` once the checkpoint of ``STEP`` is complete in its temporary directory and before it
is renamed into place, then runs the normal CLI (``nemo_rpo.cli.train.main``) on the other arguments.
"""

from __future__ import annotations

import os
import sys

import nemo_rpo.cli  # noqa: F401 - the CPU runtime environment, before torch loads (as nemo-rpo-train)


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] != "--kill-at-save":
        raise SystemExit("usage: _faulty_train.py --kill-at-save STEP [overrides ...]")
    kill_step, overrides = int(argv[1]), argv[2:]

    from nemo_rpo.cli.train import main as train_main
    from nemo_rpo.training import checkpoint

    def kill(step: int, path: os.PathLike) -> None:
        if step == kill_step:
            sys.stdout.flush()
            os._exit(137)

    checkpoint.BEFORE_COMMIT.append(kill)
    train_main(overrides)


if __name__ == "__main__":
    main(sys.argv[1:])
