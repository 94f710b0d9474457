"""Entry points. Importing this package sets the CPU threading runtime's environment before torch loads.

The OpenMP runtime (libgomp, loaded with torch) reads its settings once, when it is loaded, so they
must be in the environment before ``import torch``; every ``nemo-rpo-*`` command and
``python -m nemo_rpo.train`` import this package first. A value already in the environment is kept.
"""

from __future__ import annotations

import os
import sys

__all__ = ["CPU_RUNTIME_ENV"]

# OMP_WAIT_POLICY=PASSIVE: an OpenMP thread waiting at a barrier sleeps instead of spinning. On cores
# shared with another process a spinning waiter burns the time slice of the thread it waits for, and
# single steps stalled for seconds (benchmarks/contention.py measures it). MKL_DYNAMIC / OMP_DYNAMIC
# =FALSE: a fixed thread count, MKL's documented condition for run-to-run reproducible results.
# MKL_CBWR=AUTO: MKL's conditional numerical reproducibility on the branch it picks for this CPU, which
# Intel documents as bitwise reproducible from run to run at a fixed thread count; without it a resumed
# process once computed with MKL's AVX2 kernels on an AVX-512 CPU (the 1-in-22 exact-resume failure,
# docs/determinism.md). The same numbers as without it where MKL keeps its usual kernels.
CPU_RUNTIME_ENV = {
    "OMP_WAIT_POLICY": "PASSIVE",
    "MKL_DYNAMIC": "FALSE",
    "OMP_DYNAMIC": "FALSE",
    "MKL_CBWR": "AUTO",
}

if "torch" not in sys.modules:  # once torch is loaded, libgomp has read its settings: change nothing
    for _key, _value in CPU_RUNTIME_ENV.items():
        os.environ.setdefault(_key, _value)
