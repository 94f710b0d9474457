"""Entry points. Importing this package sets the CPU threading runtime's environment before torch loads.

The OpenMP runtime (libgomp, loaded with torch) reads its settings once, when it is loaded, so they
must be in the environment before ``import torch``; every ``nemo-rpo-*`` command and
``python -m nemo_rpo.train`` import this package first. A value already in the environment is kept.
"""

from __future__ import annotations

import os
import sys

__all__ = ["CPU_RUNTIME_ENV"]

# The waiting policy, OMP_WAIT_POLICY=PASSIVE with GOMP_SPINCOUNT=1000: a thread waiting at an OpenMP
# barrier spins ~10 us (libgomp counts ~100,000 spins per ms), then sleeps. On cores shared with another
# process a long spin burns the time slice of the thread it waits for (libgomp's own 3 ms spin stalled
# single steps for seconds); sleeping at once makes every region wake its workers first (~100 us each
# on a VM: the embedded default's idle step 1.5x slower than with the short spin, which catches the
# next region of a step and sleeps through the gaps; benchmarks/contention.py). Intel's OpenMP reads
# only PASSIVE. The two are one setting: where the environment has either, neither is set.
# MKL_DYNAMIC / OMP_DYNAMIC=FALSE: a fixed thread count, MKL's documented condition for run-to-run
# reproducible results. MKL_CBWR=AUTO: MKL's conditional numerical reproducibility on the branch it picks
# for this CPU, which Intel documents as bitwise reproducible from run to run at a fixed thread count.
# The same numbers as without it where MKL keeps its usual kernels. It does not cover the race of MKL's
# vector math functions at their first call (issue 17's resume failure): cpu_support.warm_mkl_vml does.
CPU_RUNTIME_ENV = {
    "OMP_WAIT_POLICY": "PASSIVE",
    "GOMP_SPINCOUNT": "1000",
    "MKL_DYNAMIC": "FALSE",
    "OMP_DYNAMIC": "FALSE",
    "MKL_CBWR": "AUTO",
}
_WAIT_POLICY = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")

if "torch" not in sys.modules:  # once torch is loaded, libgomp has read its settings: change nothing
    _user_policy = any(key in os.environ for key in _WAIT_POLICY)
    for _key, _value in CPU_RUNTIME_ENV.items():
        if not (_user_policy and _key in _WAIT_POLICY):
            os.environ.setdefault(_key, _value)
