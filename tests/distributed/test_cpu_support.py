"""The CPU execution layer, piece by piece (one process; the TP/PP tests exercise it end to end)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from nemo_rpo.distributed import cpu_support

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU layer is inactive on GPU machines")

CUDA = "cu" + "da"  # spelled out here only to simulate megatron's requests


@pytest.fixture(scope="module", autouse=True)
def installed() -> None:
    cpu_support.install_cpu_support()
    cpu_support.install_cpu_support()  # idempotent
    assert cpu_support.is_cpu_support_installed()


def test_device_requests_are_mapped_to_cpu() -> None:
    assert torch.zeros(2, device=CUDA).device.type == "cpu"
    assert torch.empty(2, device=f"{CUDA}:0").device.type == "cpu"
    assert torch.ones(2, device=torch.device(CUDA)).device.type == "cpu"
    assert torch.ones(2, device=torch.cuda.current_device()).device.type == "cpu"
    assert torch.empty(3, pin_memory=True).device.type == "cpu"
    x = torch.arange(3.0)
    assert x.cuda() is x and x.pin_memory() is x
    assert x.to(CUDA).device.type == "cpu" and x.to(0).device.type == "cpu"
    assert x.to(torch.float64).dtype == torch.float64  # dtype positional args are untouched


def test_cuda_type_string_only_for_megatron_callers() -> None:
    x = torch.zeros(2)
    assert x.type() == "torch.FloatTensor"
    fake_megatron = {"__name__": "megatron.core.optimizer.fake"}
    exec("result = x.type()", fake_megatron, local := {"x": x})
    assert local["result"] == f"torch.{CUDA}.FloatTensor"
    exec("result = x.half().type()", fake_megatron, local)
    assert local["result"] == f"torch.{CUDA}.HalfTensor"


def test_mode_is_active_inside_custom_backward() -> None:
    class Double(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):  # noqa: ANN001, ANN205
            return x * 2

        @staticmethod
        def backward(ctx, grad):  # noqa: ANN001, ANN205
            # Megatron's TP collectives allocate like this in backward (mappings.py).
            return grad * torch.full_like(grad, 2.0, device=CUDA)

    x = torch.ones(3, requires_grad=True)
    Double.apply(x).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), 2.0))


def test_cuda_stand_ins() -> None:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    end.record()
    assert end.query() and start.elapsed_time(end) >= 0.0


def test_megatron_rng_tracker_runs_on_the_cpu_generator() -> None:
    from megatron.core import tensor_parallel

    def draw() -> torch.Tensor:
        with tensor_parallel.get_cuda_rng_tracker().fork():
            return torch.rand(4)

    tensor_parallel.model_parallel_cuda_manual_seed(5, tp_rank=0, ep_rank=0, etp_rank=0)
    default_state = torch.get_rng_state()
    first = draw()
    assert torch.equal(torch.get_rng_state(), default_state)  # the default stream is untouched
    assert not torch.equal(draw(), first)  # the tracked stream advances
    tensor_parallel.model_parallel_cuda_manual_seed(5, tp_rank=0, ep_rank=0, etp_rank=0)
    assert torch.equal(draw(), first)  # and is reproducible from its seed
    tensor_parallel.model_parallel_cuda_manual_seed(5, tp_rank=1, ep_rank=0, etp_rank=0)
    assert not torch.equal(draw(), first)  # another TP rank gets another stream


@pytest.mark.parametrize(("rows", "k", "n"), [(2048, 96, 64), (2048, 64, 600), (100, 64, 32)])
def test_blocked_mm_is_bit_identical(rows: int, k: int, n: int) -> None:
    """Narrow tall products go in row blocks (first case); the others are plain matmuls."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(rows // 4, 4, k, generator=gen), torch.randn(k, n, generator=gen)
    assert torch.equal(cpu_support._mm(a, b), torch.matmul(a, b))


needs_onednn = pytest.mark.skipif(not cpu_support._ONEDNN, reason="torch built without oneDNN")


@needs_onednn
@pytest.mark.parametrize(("shape", "k", "n"), [((2048,), 96, 64), ((512, 4), 256, 600), ((3, 5), 64, 32)])
def test_onednn_product_matches_matmul(monkeypatch, shape: tuple, k: int, n: int) -> None:
    """Short-reduction fp32 products go to oneDNN: the matmul's numbers within fp32 rounding, in a's
    leading shape, as a tensor megatron may modify in place (not a view)."""
    calls, real = [], torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(cpu_support, "_ONEDNN_MIN_FLOPS", 0)  # small test shapes
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(*shape, k, generator=gen), torch.randn(k, n, generator=gen)
    out = cpu_support._product(a, b)
    assert calls and out.shape == (*shape, n) and out.is_contiguous() and not out._is_view()
    expected = torch.matmul(a.double(), b.double()).float()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5 * k**0.5)
    assert not torch.equal(out, torch.zeros_like(out))


@needs_onednn
def test_products_from_2_pow_28_flops_go_to_onednn(monkeypatch) -> None:
    calls, real = [], torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append(1) or real(*a))
    a, b = torch.randn(2048, 256), torch.randn(256, 256)  # 2 * 2048 * 256 * 256 = 2^28
    cpu_support._product(a[:-1], b)
    assert not calls
    cpu_support._product(a, b)
    assert calls


@needs_onednn
@pytest.mark.parametrize(
    ("dtype", "rows", "k"),
    [
        (torch.float32, 1536, 4096),
        (torch.float64, 2048, 512),
        (torch.bfloat16, 2048, 512),
        (torch.float32, 512, 64),
    ],
)
def test_small_products_long_reductions_and_other_dtypes_stay_on_mkl(
    monkeypatch, dtype: torch.dtype, rows: int, k: int
) -> None:
    """The LM head's input gradient (long reduction), non-fp32 and small products (under 2^28 FLOPs) keep
    MKL's numbers exactly."""
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: pytest.fail("oneDNN called"))
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(rows, k, generator=gen).to(dtype), torch.randn(k, 256, generator=gen).to(dtype)
    assert torch.equal(cpu_support._product(a, b), cpu_support._mm(a, b))


@pytest.mark.parametrize("onednn", [False, pytest.param(True, marks=needs_onednn)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_layers_use_the_cpu_function_with_megatron_numbers(
    monkeypatch, with_bias: bool, onednn: bool
) -> None:
    """megatron's linear layers route through _CpuLinear; output and every gradient equal megatron's own
    autograd function: bit for bit with MKL products, within fp32 rounding where oneDNN computes the
    output and input gradient (one process: the input-gradient all-reduce is the TP tests')."""
    from megatron.core.tensor_parallel import layers

    monkeypatch.setattr(cpu_support, "_ONEDNN", onednn)
    monkeypatch.setattr(cpu_support, "_ONEDNN_MIN_FLOPS", 0)  # small test shapes
    calls, real_apply = [], cpu_support._CpuLinear.apply
    monkeypatch.setattr(cpu_support._CpuLinear, "apply", lambda *a: calls.append(1) or real_apply(*a))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(512, 4, 48, generator=gen)
    weight = torch.randn(40, 48, generator=gen)
    bias = torch.randn(40, generator=gen)
    grad = torch.randn(512, 4, 40, generator=gen)

    def run(fn):
        xi, wi, bi = (t.clone().requires_grad_() for t in (x, weight, bias))
        out = fn(xi, wi, bi if with_bias else None, False, False, False, tp_group=None)
        out.mul_(1.0)  # megatron adds biases/residuals in place: the output must allow it
        out.backward(grad)
        return out.detach(), xi.grad, wi.grad, bi.grad

    ours = run(layers.linear_with_grad_accumulation_and_async_allreduce)
    assert calls, "megatron's linear did not go through _CpuLinear"

    def megatron_original(i, w, b, *flags, tp_group=None):
        return layers.LinearWithGradAccumulationAndAsyncCommunication.apply(i, w, b, *flags, None, 0, None)

    theirs = run(megatron_original)
    for name, a, b in zip(("output", "input grad", "weight grad", "bias grad"), ours, theirs):
        if a is None and b is None and not with_bias:
            continue
        if onednn and name in ("output", "input grad"):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
            assert not torch.equal(a, torch.zeros_like(a)), name
        else:
            assert torch.equal(a, b), name


_IMPORT_SCRIPT = """
import sys, torch
from nemo_rpo.distributed.cpu_support import prepare_megatron_import
prepare_megatron_import()
import megatron.core.models.gpt, megatron.core.transformer
from megatron.core.fusions.fused_bias_swiglu import swiglu
print("dynamo imported by megatron:", "torch._dynamo" in sys.modules)
print("megatron kernel keeps its name:", swiglu.__name__, swiglu.__wrapped__.__module__)

@torch.compile(backend="eager", fullgraph=True)
def double_then_add(x, y):
    return 2 * x + y

x = torch.arange(6.0).view(2, 3)
print("decorator result:", torch.equal(double_then_add(x, 1.0), 2 * x + 1.0))
print("dynamo imported at first call:", "torch._dynamo" in sys.modules)
print("module compiled at once:", type(torch.compile(torch.nn.Linear(2, 2), backend="eager")).__name__)
"""


def test_prepare_megatron_import_defers_torch_compile_to_first_call() -> None:
    """Importing megatron no longer imports dynamo (megatron's ``@torch.compile`` kernels are deferred);
    a deferred function compiles on its first call, keeps its options and computes the same numbers."""
    out = subprocess.run([sys.executable, "-c", _IMPORT_SCRIPT], capture_output=True, text=True,
                         check=True, timeout=300)  # fmt: skip
    assert out.stdout.splitlines() == [
        "dynamo imported by megatron: False",
        "megatron kernel keeps its name: swiglu megatron.core.fusions.fused_bias_swiglu",
        "decorator result: True",
        "dynamo imported at first call: True",
        "module compiled at once: OptimizedModule",
    ], out.stdout + out.stderr[-2000:]


def test_openmp_dynamic_team_sizing_is_turned_off() -> None:
    """OMP_DYNAMIC=true makes libgomp size each parallel region by the load average: a run turns it off."""
    code = (
        "import torch\n"
        "from nemo_rpo.distributed.cpu_support import _torch_libgomp, fix_openmp_team_size\n"
        "lib = _torch_libgomp()\n"
        "print(lib.omp_get_dynamic(), fix_openmp_team_size(), lib.omp_get_dynamic(), fix_openmp_team_size())\n"
    )
    env = {**os.environ, "OMP_DYNAMIC": "TRUE"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["1", "True", "0", "False"]
