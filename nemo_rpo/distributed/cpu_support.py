"""CPU execution support: lets megatron-core 0.16.1 run on CPU with the gloo backend.

megatron-core assumes CUDA at a small, known set of call sites (see
``/work/shared/notes/megatron-core-on-cpu.md`` for the file:line list). Rather than forking megatron, this
module rewrites those assumptions at run time, in one place, and only when there is no GPU:

1. A :class:`torch.overrides.TorchFunctionMode` that, for every torch call,
   maps ``device="cuda"``, ``"cuda:N"``, ``torch.device("cuda")`` and bare integer device indices
   (what ``torch.cuda.current_device()`` returns) to ``"cpu"``; drops ``pin_memory=True``; makes
   ``Tensor.cuda()`` / ``Tensor.pin_memory()`` return the tensor; and reports ``torch.cuda.*Tensor`` type
   strings from ``Tensor.type()`` to callers inside ``megatron.*`` only (its optimizers check
   ``param.type() == 'torch.cuda.FloatTensor'``), so our own code still sees the truth.
   Torch function modes are thread-local and the autograd engine does not carry them into custom
   ``autograd.Function.backward`` (megatron's tensor-parallel collectives and activation recompute run
   there), so the mode is re-entered around every custom backward and around megatron's recompute hook.
2. ``torch.cuda.current_device`` -> 0, ``synchronize`` / ``empty_cache`` -> no-ops, ``torch.cuda.Event``
   -> a ``perf_counter`` stand-in.
3. Megatron's RNG tracker (``tensor_parallel.random``) on the CPU default generator: a CPU build's
   ``torch.cuda.manual_seed`` silently does nothing and ``torch.cuda.get_rng_state`` raises.
4. Inference: ``TextGenerationController`` builds ``torch.Generator(device=cuda)`` in ``__init__``;
   generator construction is not a torch function, so the mode cannot see it.
5. Speed: megatron's linear-layer autograd function (:class:`_CpuLinear`) computes large forward and
   input-gradient products with oneDNN where it is built into torch (fp32, same precision: only the
   summation order differs), the rest with MKL, narrow-output products in row blocks.
6. :func:`tune_glibc_malloc` (not installed here: ``launch.configure_cpu`` applies it when
   ``trainer.keep_freed_memory``) stops glibc from unmapping and re-faulting large blocks every step.
7. Start-up: :func:`prepare_megatron_import` (call it before the first ``import megatron``) makes
   ``torch.compile`` of a plain function defer its work, dynamo and inductor imports included, to the
   function's first call. Megatron decorates its fused kernels with ``torch.compile`` at import time,
   which costs ~3 s per process; a CPU run never calls those kernels.
8. :func:`warm_mkl_vml` (``launch.configure_cpu`` and ``init_distributed`` call it) makes the first call
   of each MKL vector math function on one thread: a first call from two threads at once sometimes
   computed one thread's share inaccurately (issue 17's resume failure).

None of this changes numerics; dropout masks come from the CPU generator, so they differ from a GPU run.
:func:`install_cpu_support` is idempotent and does nothing at all when ``torch.cuda.is_available()``:
on a GPU machine megatron runs unmodified. Every replacement of a torch or megatron attribute above is a
patch of :mod:`nemo_rpo.patches` (scopes ``cpu_import`` and ``cpu``: the target, the signature it expects,
why); this module holds the code they install and applies them. The TP/PP/DP equality tests in
``tests/distributed`` are the tests of this module.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import sys
import time
import types
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack

from nemo_rpo import patches

__all__ = [
    "filter_noisy_warnings",
    "install_cpu_support",
    "is_cpu_support_installed",
    "prepare_megatron_import",
    "tune_glibc_malloc",
    "use_onednn",
    "packed_fp32_decoding",
    "cpu_vendor",
    "warm_mkl_vml",
]

_INSTALLED = False
_WARNINGS_FILTERED = False
_COMPILE_DEFERRED = False

# Messages (regex prefixes) that flood every CPU run and carry no information for us.
_NOISY_WARNINGS = (
    r"Transformer Engine and Apex are not installed",
    r"Apex is not installed",
    r"full scope is deprecated",
    r"The following imports from `dynamic_context.py` will be removed",
    r"`torch.jit.script_method` is deprecated",
    r"Please use DTensor instead and we are deprecating ShardedTensor",  # torch_dist checkpoint save
)


def filter_noisy_warnings() -> None:
    """Silence megatron's import-time "no apex / no TE" warnings and torch.distributed FutureWarnings, once.

    Call this before importing ``megatron`` (the warnings fire at import time); it is safe on GPU too.
    """
    global _WARNINGS_FILTERED
    if _WARNINGS_FILTERED:
        return
    for message in _NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"megatron\.core")
    _WARNINGS_FILTERED = True


def prepare_megatron_import() -> None:
    """Call before the first ``import megatron``: filters its import-time warnings (CPU and GPU) and, on
    CPU only, defers ``torch.compile`` of plain functions to their first call (item 7 above)."""
    global _COMPILE_DEFERRED
    filter_noisy_warnings()
    if _COMPILE_DEFERRED or torch.cuda.is_available():
        return
    patches.install("cpu_import")  # torch.compile -> _deferred_compile
    _COMPILE_DEFERRED = True


def _deferred_compile(compile_fn):  # noqa: ANN001, ANN202 - wraps torch.compile's own signature
    """``torch.compile`` that, given a plain function, returns a wrapper compiling it on first call.

    Modules, and anything else that is not a plain function, go to ``compile_fn`` at once, unchanged.
    """

    @functools.wraps(compile_fn)
    def compile_later(model=None, **kwargs):  # noqa: ANN001, ANN202
        if model is None:  # used as ``@torch.compile(...)``
            return lambda fn: compile_later(fn, **kwargs)
        if not isinstance(model, types.FunctionType):
            return compile_fn(model, **kwargs)
        compiled = None

        @functools.wraps(model)
        def run(*args, **kw):  # noqa: ANN002, ANN003, ANN202
            nonlocal compiled
            if compiled is None:
                compiled = compile_fn(model, **kwargs)
            return compiled(*args, **kw)

        return run

    return compile_later


def is_cpu_support_installed() -> bool:
    """True once :func:`install_cpu_support` has patched this process (never on a GPU machine)."""
    return _INSTALLED


# --------------------------------------------------------------------------------------------------
# 1. The torch function mode
# --------------------------------------------------------------------------------------------------


def _is_cuda_device(device: Any) -> bool:
    if isinstance(device, str):
        return device.startswith("cuda")
    if isinstance(device, torch.device):
        return device.type == "cuda"
    # A bare index means a CUDA ordinal to torch; bool is an int subclass but never a device.
    return isinstance(device, int) and not isinstance(device, bool)


def _called_from_megatron() -> bool:
    """Whether the nearest non-torch caller frame belongs to a ``megatron.*`` module."""
    frame = sys._getframe(2)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if not module.startswith("torch"):
            return module.startswith("megatron.")
        frame = frame.f_back
    return False


_TENSOR_TYPE = torch.Tensor.type
_RETURNS_SELF = {torch.Tensor.cuda, torch.Tensor.pin_memory}
# Methods whose positional arguments may carry a device ("x.to('cuda')", "x.to(0)").
_POSITIONAL_DEVICE = {torch.Tensor.to}


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA device requests to CPU; see the module docstring."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch protocol
        if func in _RETURNS_SELF:
            return args[0]
        if func is _TENSOR_TYPE and len(args) == 1 and not kwargs:
            name = func(*args)
            if args[0].device.type == "cpu" and _called_from_megatron():
                return name.replace("torch.", "torch.cuda.", 1)
            return name
        if kwargs:
            if "device" in kwargs and _is_cuda_device(kwargs["device"]):
                kwargs = {**kwargs, "device": "cpu"}
            if kwargs.get("pin_memory"):
                kwargs = {k: v for k, v in kwargs.items() if k != "pin_memory"}
        else:
            kwargs = {}
        if func in _POSITIONAL_DEVICE and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


_MODE = _CudaToCpuMode()


@contextlib.contextmanager
def _mode_active() -> Iterator[None]:
    """Enter the mode unless this thread already has it (backward threads and hooks do not)."""
    if _MODE in _get_current_function_mode_stack():
        yield
    else:
        with _MODE:
            yield


def _with_mode(fn):  # noqa: ANN001, ANN202 - a decorator over arbitrary callables
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _mode_active():
            return fn(*args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------------------------------
# 2. torch.cuda stand-ins
# --------------------------------------------------------------------------------------------------


class _CpuEvent:
    """``torch.cuda.Event`` stand-in: records wall-clock time so ``elapsed_time`` (ms) still works."""

    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False):
        self._time: float | None = None

    def record(self, stream: Any = None) -> None:
        self._time = time.perf_counter()

    def synchronize(self) -> None:
        pass

    def wait(self, stream: Any = None) -> None:
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, end_event: _CpuEvent) -> float:
        if self._time is None or end_event._time is None:
            raise RuntimeError("elapsed_time: both events must be recorded first")
        return (end_event._time - self._time) * 1000.0


# 3. (RNG tracker) and 4. (inference generator) are replacements of megatron functions with nothing of
# ours to call: they live whole in nemo_rpo.patches (cpu.*_rng_state, cpu.rng_tracker_*, cpu.inference_generator).


# --------------------------------------------------------------------------------------------------
# 5. Linear layers: oneDNN products, row-blocked narrow MKL products
# --------------------------------------------------------------------------------------------------

# On the 2-core development CPU (AMD EPYC, AVX2), MKL's sgemm runs products with a narrow output
# (N <= 512 columns: a layer's output projection, fc2, and the input-gradient GEMMs of qkv, fc1 and
# the LM head) 20-40% faster when the rows are fed in blocks of 512 than as one [M, K] x [K, N] call;
# every output row is computed by the same kernel either way (bit-identical, tested).
_BLOCK_ROWS = 512
_BLOCK_MAX_COLS = 512

# oneDNN's fp32 inner product (``torch.ops.mkldnn._linear_pointwise``, shipped with torch) beats
# MKL on the same CPU by 10-30% per product for every forward and input-gradient product of the anchor
# shape whose reduction is short (K = 256-1,408), the LM-head forward included; for the LM head's input
# gradient (K = 8,192) and for weight gradients (transposed operands) MKL stays ahead. Same precision:
# fp32 products with fp32 accumulation, only the summation order differs (results agree within
# rounding, tested). Used when torch is built with oneDNN (``torch.backends.mkldnn``), for fp32, and
# only for products of at least 2^28 FLOPs (~2.5 ms here): oneDNN costs ~50 us more per call than MKL
# and compiles a kernel for every new shape (0.7-7 ms, once: its primitive cache keeps 1,024), which a
# small product never pays back; training repeats its shapes, the first step pays the compilation.
_ONEDNN_MAX_K = 2048
_ONEDNN_MIN_FLOPS = 1 << 28


def _onednn_available() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


_ONEDNN = _onednn_available()


def use_onednn(enabled: bool) -> None:
    """Whether large fp32 linear-layer products may go to oneDNN (where torch has it); ``False`` sends
    every product to MKL (``trainer.deterministic``: oneDNN's kernels differ by CPU)."""
    global _ONEDNN
    _ONEDNN = enabled and _onednn_available()


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a [..., K] @ b [K, N] -> [..., N]`` with MKL, in row blocks when the output is narrow and tall."""
    rows = a.numel() // a.shape[-1] if a.shape[-1] else 0
    cols = b.shape[1]
    if cols > _BLOCK_MAX_COLS or rows < 3 * _BLOCK_ROWS:
        return torch.matmul(a, b)
    a2 = a.reshape(rows, a.shape[-1])
    # Allocated in the result's shape and returned as is: a view returned from a custom autograd
    # Function may not be modified in place later (megatron adds biases and residuals in place).
    out = torch.empty(*a.shape[:-1], cols, dtype=torch.result_type(a, b), device=a.device)
    out2 = out.view(rows, cols)
    for i in range(0, rows, _BLOCK_ROWS):
        torch.mm(a2[i : i + _BLOCK_ROWS], b, out=out2[i : i + _BLOCK_ROWS])
    return out


def _product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a [..., K] @ b [K, N] -> [..., N]``: oneDNN for large fp32 products with a short reduction, else
    :func:`_mm`."""
    k, n = b.shape
    flops = 2 * a.numel() * n
    if not (
        _ONEDNN and a.dtype == b.dtype == torch.float32 and k <= _ONEDNN_MAX_K and flops >= _ONEDNN_MIN_FLOPS
    ):
        return _mm(a, b)
    # oneDNN's linear computes x @ w.T for w [N, K]; b.t() is that operand (a strided view is fine).
    y = torch.ops.mkldnn._linear_pointwise(a.reshape(-1, a.shape[-1]), b.t(), None, "none", [], "")
    if a.dim() == 2:
        return y
    # The result in a's leading shape, as a new tensor on y's storage rather than a view (see _mm).
    return y.new_empty(0).set_(y.untyped_storage(), y.storage_offset(), (*a.shape[:-1], n))


class _CpuLinear(torch.autograd.Function):
    """megatron's ``LinearWithGradAccumulationAndAsyncCommunication`` for the case CPU runs take (no
    sequence parallelism, no gradient-accumulation fusion, no deferred weight gradients), through
    :func:`_product`; the same products, and the same input-gradient all-reduce under tensor parallelism."""

    @staticmethod
    def forward(ctx, input, weight, bias, allreduce_dgrad, tp_group):  # noqa: ANN001, ANN205
        ctx.save_for_backward(input, weight)
        ctx.use_bias, ctx.allreduce_dgrad, ctx.tp_group = bias is not None, allreduce_dgrad, tp_group
        output = _product(input, weight.t())
        return output + bias if bias is not None else output

    @staticmethod
    def backward(ctx, grad_output):  # noqa: ANN001, ANN205
        input, weight = ctx.saved_tensors
        grad_input = _product(grad_output, weight)
        handle = None
        if ctx.allreduce_dgrad:
            handle = torch.distributed.all_reduce(grad_input, group=ctx.tp_group, async_op=True)
        grad_2d = grad_output.reshape(-1, grad_output.shape[-1])
        grad_weight = (
            grad_2d.t().matmul(input.reshape(-1, input.shape[-1])) if ctx.needs_input_grad[1] else None
        )
        grad_bias = grad_2d.sum(dim=0) if ctx.use_bias else None
        if handle is not None:
            handle.wait()
        return grad_input, grad_weight, grad_bias, None, None


# --------------------------------------------------------------------------------------------------
# 6. Allocator (trainer.keep_freed_memory, applied by launch.configure_cpu)
# --------------------------------------------------------------------------------------------------

# glibc <malloc.h> parameter ids.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
# glibc's defaults (the thresholds are where glibc starts; it raises them as it goes unless tuned)
_GLIBC_MMAP_MAX, _GLIBC_MMAP_THRESHOLD, _GLIBC_TRIM_THRESHOLD = 65536, 128 * 1024, 128 * 1024
_MALLOC_TUNED = False


def tune_glibc_malloc() -> bool:
    """Make glibc keep freed memory instead of returning it to the kernel; returns whether it applied.

    By default glibc serves every allocation over its mmap threshold (a few MB: activations, logits,
    gradients) with a fresh ``mmap`` and unmaps it on free, so a training step re-faults the same
    pages every time (tens of thousands of minor faults per anchor-shape step). ``M_MMAP_MAX = 0``
    sends large blocks to the heap, and a 1 GiB ``M_TRIM_THRESHOLD`` stops the heap from shrinking
    after each step. The process keeps its peak footprint in exchange. Process-wide and irreversible;
    call it before the first large allocation. No effect (returns False) without glibc, or under a
    preloaded allocator such as jemalloc, which replaces ``malloc`` itself.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return True
    if any(lib in os.environ.get("LD_PRELOAD", "") for lib in ("jemalloc", "tcmalloc", "mimalloc")):
        return False
    name = ctypes.util.find_library("c")
    if name is None or "libc.so" not in name:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return False
    _MALLOC_TUNED = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    if _MALLOC_TUNED:
        global _LIBC
        _LIBC = libc
    return _MALLOC_TUNED


_LIBC = None
_MALLOC_SUSPENDED = 0


def fix_openmp_team_size() -> bool:
    """Turn OpenMP's dynamic team sizing off in torch's libgomp; returns whether it was on.

    With dyn-var on (``OMP_DYNAMIC=true``, or a library calling ``omp_set_dynamic(1)``), libgomp sizes
    every parallel region from the machine's 15-minute load average (``getloadavg``; on 2 cores one thread
    from a load of 1.9 on): on a busy machine ATen's
    parallel reductions and products run on fewer threads and split their sums differently, so the same
    seed gives numbers that depend on the load (measured: a hash of six products and softmax sums on
    2 threads at load average ~8 differs between ``OMP_DYNAMIC=TRUE`` and ``FALSE``). A training run
    must not depend on its neighbours, so it runs with a fixed team. No-op where torch uses another
    OpenMP runtime (returns False).
    """
    lib = _torch_libgomp()
    if lib is None or not lib.omp_get_dynamic():
        return False
    lib.omp_set_dynamic(0)
    return True


# ATen's float kernels that call MKL's vector math library (VML) where torch is built with MKL
# (``ATen/cpu/vml.h``, ``IMPLEMENT_VML_MKL``).
_VML_OPS = ("acos", "asin", "atan", "cos", "erf", "erfc", "erfinv", "exp", "log", "log10", "log2", "sin",
            "sqrt", "tan", "tanh", "trunc")  # fmt: skip
_VML_WARMED = False


def warm_mkl_vml() -> bool:
    """Call each of MKL's vector math functions that ATen uses once, on one thread; True the first time.

    A VML function's first call in a process is not safe when two threads make it at once (seen, not
    read in MKL's code: presumably a lazy initialisation): ATen splits a unary op over more than 2,048
    elements between its threads, and now and then one thread's share comes out inaccurate (torch
    2.13.0's MKL 2024.2: the first ``torch.cos`` of a ``[72, 4, 1, 16]`` tensor, 2 threads, two busy
    loops beside it, gave one thread's 2,304 elements with errors up to 1.5e-4 instead of 3.4e-8 in 3
    of 150 fresh processes, ``benchmarks/vml_race.py``). In training that was RoPE's first ``cos`` of a
    resumed process: issue 17's resume that differed in the last bit. Calling each function once
    beforehand on one thread leaves nothing to initialise concurrently (0 of 150 in the same run). Call
    it before the first parallel op, after anything that must precede MKL's first call (``MKL_CBWR``).
    Idempotent.
    """
    global _VML_WARMED
    if _VML_WARMED:
        return False
    _VML_WARMED = True
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for dtype in (torch.float32, torch.float64):
            x = torch.linspace(0.1, 0.9, 64, dtype=dtype)
            for op in _VML_OPS:
                getattr(torch, op)(x)
    finally:
        torch.set_num_threads(threads)
    return True


def _torch_libgomp():  # noqa: ANN202 - a ctypes handle
    """torch's own libgomp (dlopen of an already-loaded file returns the same handle), or None."""
    libdir = os.path.join(os.path.dirname(torch.__file__), "lib")
    names = [n for n in os.listdir(libdir) if n.startswith("libgomp")] if os.path.isdir(libdir) else []
    for name in [*(os.path.join(libdir, n) for n in names), ctypes.util.find_library("gomp")]:
        if name is None:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        if hasattr(lib, "omp_get_dynamic") and hasattr(lib, "omp_set_dynamic"):
            return lib
    return None


def _cpuinfo(field: str) -> str:
    """The first ``field`` line's value in ``/proc/cpuinfo``; ``""`` where there is none (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_vendor() -> str:
    """``/proc/cpuinfo``'s ``vendor_id`` (``GenuineIntel``, ``AuthenticAMD``, ...); ``""`` where unknown."""
    return _cpuinfo("vendor_id")


def packed_fp32_decoding() -> bool:
    """Whether the one-token decoding step (``CachedDecoder``) multiplies fp32 by oneDNN-packed weight copies
    instead of MKL on ``[in, out]`` copies: where oneDNN is on (not ``trainer.deterministic``) and the CPU
    is not Intel's. At 32 rows MKL's fp32 GEMM streams the weights at about half oneDNN's packed rate on
    an AMD EPYC (Zen 3: SmolLM2-135M's 30 layers 103 vs 59 ms, its LM head 27 vs 14 ms); on the Intel
    Xeon of the measurements packing took 1.12-1.15x off ``[out, in]`` products, and the ``[in, out]``
    copies in use were not compared with it in one run (benchmarks/README.md, sampling, sessions 18-19).
    Results differ from MKL's within fp32 rounding (another summation order)."""
    return _ONEDNN and cpu_vendor() not in ("", "GenuineIntel")


def packed_decoding(dtype: torch.dtype) -> bool:
    """Whether ``CachedDecoder``'s one-token step multiplies by oneDNN-packed weight copies in ``dtype``:
    fp32 where :func:`packed_fp32_decoding`, bf16 where the CPU has bf16 products; never with oneDNN off
    (``trainer.deterministic``), whose products must not depend on the CPU's oneDNN kernels."""
    if dtype == torch.float32:
        return packed_fp32_decoding()
    return dtype == torch.bfloat16 and _ONEDNN and cpu_has_bf16_matmul()


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX-512-BF16 or AMX-BF16, from ``/proc/cpuinfo``).

    Elsewhere torch still runs bf16 products, converting to fp32 inside every kernel: slower than fp32.
    Not on Linux (no ``/proc/cpuinfo``): ``False``.
    """
    return bool({"avx512_bf16", "amx_bf16"} & set(_cpuinfo("flags").split()))


@contextlib.contextmanager
def glibc_malloc_defaults() -> Iterator[None]:
    """Within the block, glibc allocates as it comes (large blocks mapped and unmapped on free), even where
    :func:`tune_glibc_malloc` applied; on exit the tuning is back. No-op where it never applied.

    Keeping freed memory pays when the same shapes come back every step (a training step). Where they grow
    (decoding without a KV cache: every step's activations a token longer, interleaved with the tensors
    that outlive the step) no freed block fits the next request and the heap grows without bound: 24 GB
    resident, killed, while sampling 128 tokens on SmolLM2-135M, against a 6.3 GB plain peak. So
    :class:`~nemo_rpo.models.gpt.PolicyGPTModel` runs every forward without autograd (generation,
    reference and reward scoring, evaluation) inside this block: their large blocks are mapped and
    unmapped, and the heap keeps at most what the training step freed. Reentrant; mallopt is process-wide,
    which the single training thread does not mind.
    """
    global _MALLOC_SUSPENDED
    if _LIBC is None:
        yield
        return
    if _MALLOC_SUSPENDED == 0:
        _LIBC.mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX)
        _LIBC.mallopt(_M_MMAP_THRESHOLD, _GLIBC_MMAP_THRESHOLD)
        _LIBC.mallopt(_M_TRIM_THRESHOLD, _GLIBC_TRIM_THRESHOLD)
    _MALLOC_SUSPENDED += 1
    try:
        yield
    finally:
        _MALLOC_SUSPENDED -= 1
        if _MALLOC_SUSPENDED == 0:
            _LIBC.mallopt(_M_MMAP_MAX, 0)
            _LIBC.mallopt(_M_TRIM_THRESHOLD, 1 << 30)


# --------------------------------------------------------------------------------------------------


def install_cpu_support() -> None:
    """Patch torch and megatron-core so megatron runs on CPU (gloo). No-op on a GPU machine or when done.

    Must run before megatron builds any tensor (model construction, process-group setup is fine either
    way). The mode is entered for the calling thread; call this from the thread that runs training.
    """
    global _INSTALLED
    if _INSTALLED or torch.cuda.is_available():
        return
    filter_noisy_warnings()
    # Advice about a CUDA driver setting; meaningless without a GPU.
    warnings.filterwarnings("ignore", message=r".*CUDA_DEVICE_MAX_CONNECTIONS")
    patches.install("cpu")
    from megatron.core.tensor_parallel import random as mp_random

    mp_random.initialize_rng_tracker(force_reset=True)  # its states, now on the CPU generator
    _MODE.__enter__()  # stays on for the life of the process
    _INSTALLED = True
