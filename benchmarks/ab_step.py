"""Single-change A/B on the whole anchor-shape RPO step: one process, the change toggled between steps.

Machine noise on the shared CPU is +-10% between minutes, so two separate runs cannot resolve a 3%
change. This script builds the anchor model once (as ``bench_step.py`` does), then alternates steps with
the change off (A) and on (B) in interleaved pairs, swapping which goes first each pair, and prints
the median step time of each side and the median of the per-pair speedups ``A / B``.

Changes (``--change``):

* ``onednn``: the linear layers' forward and input-gradient products through oneDNN
  (``cpu_support._product``, B) vs MKL for every product (A);
* ``gemm-blocking``: ``cpu_support._mm`` (row-blocked narrow MKL products, B) vs one ``torch.matmul``
  per product (A);
* ``swiglu``: ``nemo_rpo.models.mlp``'s SwiGLU autograd function (B) vs megatron's ``MLP.forward`` (A);
* ``finite-check``: ``step.all_finite`` (one ``aminmax`` per gradient buffer, B) vs
  ``torch.isfinite(buffer).all()`` (A);
* ``sdpa-contiguous``: contiguous q/k/v into SDPA on CPU (B) vs the strided views (A);
* ``share-prompt``: each prompt computed once for its K responses (``model.share_prompt``, packed
  micro-batches, B) vs every sequence whole (A).

Run::

    python benchmarks/ab_step.py --change swiglu --pairs 12
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import build_anchor, make_examples, make_microbatches  # noqa: E402

CHANGES = ["onednn", "gemm-blocking", "swiglu", "finite-check", "sdpa-contiguous", "share-prompt"]


def _toggles(change: str, state: dict):
    """``(off, on)``: two callables that put the process in state A (off) or B (on, as shipped).

    ``state["batches"]``: ``(unpacked, packed)`` micro-batches; ``state["current"]`` is what a step trains on.
    """
    if change == "share-prompt":

        def use(i: int):
            return lambda: state.__setitem__("current", state["batches"][i])

        return use(0), use(1)
    if change == "onednn":
        from nemo_rpo.distributed import cpu_support

        if not cpu_support._ONEDNN:
            raise SystemExit("ab_step.py: this torch is built without oneDNN")

        def set_onednn(flag: bool):
            return lambda: setattr(cpu_support, "_ONEDNN", flag)

        return set_onednn(False), set_onednn(True)
    if change == "gemm-blocking":
        from nemo_rpo.distributed import cpu_support

        shipped = cpu_support._mm

        def set_mm(fn):
            return lambda: setattr(cpu_support, "_mm", fn)

        return set_mm(torch.matmul), set_mm(shipped)
    if change == "swiglu":
        from megatron.core.transformer.mlp import MLP

        from nemo_rpo.models import mlp

        def set_forward(fn):
            return lambda: setattr(MLP, "forward", fn)

        return set_forward(mlp._MEGATRON_FORWARD), set_forward(mlp.forward)
    if change == "finite-check":
        from nemo_rpo.training import step

        shipped = step.all_finite

        def isfinite_all(t: torch.Tensor) -> bool:
            return bool(torch.isfinite(t).all())

        def set_check(fn):
            return lambda: setattr(step, "all_finite", fn)

        return set_check(isfinite_all), set_check(shipped)
    if change == "sdpa-contiguous":
        from nemo_rpo.models import attention

        def set_flag(flag: bool):
            return lambda: setattr(attention, "CONTIGUOUS_ON_CPU", flag)

        return set_flag(False), set_flag(True)
    raise SystemExit(f"ab_step.py: unknown --change {change!r}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--change", required=True, choices=CHANGES)
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--tied", action="store_true")
    parser.add_argument("--default-malloc", action="store_true")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    cfg, _, _, (model, optimizer, scheduler) = build_anchor(args, args.micro_batch_size)
    from nemo_rpo.training.step import sequence_logps, train_step

    examples = make_examples(args.prompts, cfg.k, cfg.model.vocab_size, args.seed)
    microbatches = make_microbatches(examples, args.micro_batch_size)
    packed = make_microbatches(examples, args.micro_batch_size, share_prompt=True)
    state = {"batches": (microbatches, packed), "current": packed}  # packed: as training runs it
    ref = sequence_logps(model, microbatches, len(examples))

    def step() -> float:
        t0 = time.perf_counter()
        train_step(model, optimizer, scheduler, state["current"], lambda b: ref[b.index], cfg.loss)
        return time.perf_counter() - t0

    off, on = _toggles(args.change, state)
    for side in (off, on):
        side()
        for _ in range(args.warmup):
            step()
    a, b = [], []
    for i in range(args.pairs):
        for side, times in ((off, a), (on, b)) if i % 2 == 0 else ((on, b), (off, a)):
            side()
            times.append(step())
    on()
    speedups = [x / y for x, y in zip(a, b)]
    print(f"change {args.change}: {args.pairs} interleaved pairs")
    print(
        f"A (off) median {statistics.median(a):.3f} s/step; B (on) median {statistics.median(b):.3f} s/step"
    )
    print(f"per-pair speedup A/B: median {statistics.median(speedups):.3f} "
          f"(range {min(speedups):.2f}-{max(speedups):.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
