"""Run a worker script under N gloo processes (torchrun) and hand its results back to the test.

A worker writes its results with ``torch.save`` into the output directory it is given (rank 0 by
convention); the test loads them with ``torch.load(weights_only=True)`` and compares. torchrun is used
rather than ``torch.multiprocessing.spawn`` because it starts clean interpreters (no inherited pytest
state), sets the rendezvous environment exactly as production launches do, and kills every rank if one
fails.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port that was free a moment ago (the race with other tests is harmless in practice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_workers(script: Path, nproc: int, args: list[str], *, timeout: float = 240.0) -> str:
    """Run ``script args`` on ``nproc`` processes (``nproc == 1`` runs it plainly, world size 1).

    Workers get ``OMP_NUM_THREADS=1`` (N processes share the machine's cores) and the repository on
    ``PYTHONPATH``. Returns the combined output; raises ``AssertionError`` with its tail on failure.
    """
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONWARNINGS"] = "ignore"
    for key in (
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
        "SLURM_PROCID",
        "SLURM_NTASKS",
    ):
        env.pop(key, None)
    if nproc == 1:
        cmd = [sys.executable, str(script), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               f"--master_port={free_port()}", str(script), *args]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed (rc={proc.returncode}):\n{output[-6000:]}")
    return output
