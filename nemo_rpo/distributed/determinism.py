"""``trainer.deterministic``: training numbers that do not depend on which x86-64 CPU computes them.

By default a CPU run takes the fastest kernels the CPU offers, and three libraries choose them by the
CPU's instruction set: ATen's vectorised kernels (elementwise ops, reductions, softmax, norms, SDPA,
Adam: one build per ``torch.backends.cpu.get_cpu_capability()``, AVX-512 / AVX2 / default), MKL's
sgemm (every matmul), and oneDNN (the large linear-layer products of
:mod:`~nemo_rpo.distributed.cpu_support`). Each rounds differently, so the same seed gives the same
numbers on the same kind of CPU and numbers that differ from the 8th digit on (and drift further over
a run) on another. ``trainer.deterministic=true`` takes one code path that every x86-64 CPU runs alike:

- ``ATEN_CPU_CAPABILITY=default``: ATen's kernels compiled for the x86-64 baseline, whatever the CPU has;
- ``MKL_CBWR=COMPATIBLE``: MKL's conditional numerical reproducibility on its SSE2 branch, the one
  branch Intel documents to give the same results on Intel and non-Intel CPUs (the AVX2 branch does not
  on AMD: MKL then falls back to its automatic choice);
- no oneDNN products (MKL computes them), ``torch.backends.mkldnn`` off;
- a fixed thread count: ``trainer.num_threads``, or 1 when unset (MKL's COMPATIBLE branch reproduces
  only for a fixed count, and ATen splits reductions by thread).

ATen and MKL read their variables once, at their first kernel: :func:`request_deterministic` sets them
(overriding the environment's) and must run before any tensor is computed; ``nemo-rpo-train``,
``nemo-rpo-train-rm`` and ``nemo-rpo-testbed`` call it right after composing their config, in each
process (so torchrun and srun ranks too).
:func:`apply_deterministic` then checks that both took effect and fails with one line if not (a
program that computed with torch before, e.g. through the Python API: set the variables in the
environment before starting Python). What stays machine-dependent: the glibc build (libm's ``expf``
and ``logf`` are selected per CPU among variants meant to round alike) and the layout (TP/PP/DP change
summation orders). docs/determinism.md lists what was measured.
"""

from __future__ import annotations

import ctypes
import os
import platform
import warnings

__all__ = [
    "DETERMINISTIC_ENV",
    "apply_deterministic",
    "cpu_numerics",
    "prepare_process",
    "request_deterministic",
]

DETERMINISTIC_ENV = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}

# oneMKL's named constants (mkl_cbwr.h): the query for the branch, and the branches' codes.
_MKL_CBWR_BRANCH = 1
_MKL_BRANCHES = {1: "OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 8: "SSE4_2", 9: "AVX", 10: "AVX2", 12: "AVX512",
                 14: "AVX512_E1"}  # fmt: skip


def request_deterministic(enabled: bool) -> None:
    """Put :data:`DETERMINISTIC_ENV` in the environment when ``enabled`` (no-op otherwise).

    Call before the first tensor computation of the process: importing torch is fine, running a kernel
    is not (ATen and MKL read the variables at their first use). Child processes inherit them.
    """
    if enabled:
        os.environ.update(DETERMINISTIC_ENV)


def prepare_process(deterministic: bool) -> None:
    """What every entry point runs first, in each process: :func:`request_deterministic` (before any
    kernel) and then ``prepare_megatron_import`` (before megatron is imported: its warnings, deferred
    ``torch.compile``)."""
    request_deterministic(deterministic)
    from nemo_rpo.distributed.cpu_support import prepare_megatron_import

    prepare_megatron_import()


def _mkl_branch() -> str | None:
    """MKL's conditional-reproducibility branch (``OFF`` when none), or None where MKL cannot be asked.

    torch's CPU wheels link MKL into ``libtorch_cpu.so``, whose ``mkl_serv_cbwr_get`` answers what
    ``mkl_cbwr_get`` would; the first query fixes the branch from ``MKL_CBWR`` as the first MKL call does.
    """
    import torch

    if not torch.backends.mkl.is_available():
        return None
    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        get = lib.mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return None
    get.restype, get.argtypes = ctypes.c_int, [ctypes.c_int]
    code = get(_MKL_CBWR_BRANCH)
    return _MKL_BRANCHES.get(code, str(code))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_numerics() -> dict[str, object]:
    """What decides this process's CPU numbers: the CPU, ATen's kernel level, MKL's branch, oneDNN, threads.

    Asking fixes ATen's level and MKL's branch for the process (their first use reads the environment).
    """
    import torch

    return {
        "cpu": _cpu_model(),
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl_cbwr": _mkl_branch(),
        "onednn": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def apply_deterministic(num_threads: int | None) -> int:
    """Finish what :func:`request_deterministic` started (requesting it here too, for callers that did
    not): check that ATen runs its baseline kernels and MKL its COMPATIBLE branch, turn oneDNN off and
    fix the thread count (``num_threads``, else 1).

    Returns:
        The number of threads torch will use.

    Raises:
        ConfigError: when ATen or MKL had already chosen other kernels (a tensor was computed before
            the variables were set).
    """
    import torch

    from nemo_rpo.config.schema import ConfigError
    from nemo_rpo.distributed import cpu_support

    request_deterministic(True)  # in time if no kernel ran yet (Python API); else the checks below say so
    if torch.cuda.is_available():
        warnings.warn(
            "trainer.deterministic fixes CPU kernels only; CUDA kernels keep their own choices", stacklevel=2
        )
    start_with = " ".join(f"{k}={v}" for k, v in DETERMINISTIC_ENV.items())
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != "DEFAULT":
        raise ConfigError(f"trainer.deterministic: ATen already chose its {capability} kernels in this process; "
                          f"start Python with {start_with} in the environment")  # fmt: skip
    branch = _mkl_branch()
    if branch is not None and branch != "COMPATIBLE":
        raise ConfigError(f"trainer.deterministic: MKL already runs its {branch} branch in this process; "
                          f"start Python with {start_with} in the environment")  # fmt: skip
    cpu_support.use_onednn(False)
    torch.backends.mkldnn.enabled = False
    if num_threads is not None and num_threads < 1:
        raise ConfigError(f"trainer.num_threads: must be >= 1, got {num_threads}")
    torch.set_num_threads(num_threads or 1)
    return torch.get_num_threads()
