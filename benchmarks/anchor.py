"""The performance-anchor shape of ``shared/notes/performance-anchors.md`` and the per-step sample record,
shared by ``bench_step.py`` and ``trl_dpo.py`` (which runs in a venv that may lack megatron, so this
module needs nothing beyond the standard library)."""

from __future__ import annotations

import resource
import time

NUM_LAYERS, HIDDEN_SIZE, NUM_HEADS, FFN_HIDDEN_SIZE, VOCAB_SIZE = 4, 256, 8, 704, 8192
PROMPT_LEN, RESPONSE_LEN = 64, 192  # every sequence: 256 tokens

# Model shapes the step benchmarks run (``--shape``): the anchor above, and SmolLM2-135M's (a real model's
# vocabulary and depth; random weights, which do not change the step's time).
SHAPES = {
    "anchor": {"num_layers": NUM_LAYERS, "hidden_size": HIDDEN_SIZE, "num_heads": NUM_HEADS, "num_kv_heads": NUM_HEADS,
               "ffn_hidden_size": FFN_HIDDEN_SIZE, "vocab_size": VOCAB_SIZE, "tied": False},
    "smollm2": {"num_layers": 30, "hidden_size": 576, "num_heads": 9, "num_kv_heads": 3, "ffn_hidden_size": 1536,
                "vocab_size": 49152, "tied": True},
}  # fmt: skip


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (``ru_maxrss``, KiB on Linux), in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def mark() -> tuple[float, resource.struct_rusage]:
    return time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)


def step_sample(
    start: tuple[float, resource.struct_rusage], end: tuple[float, resource.struct_rusage]
) -> dict:
    """Between two :func:`mark` s: wall s, process CPU s (all threads), minor page faults, involuntary
    context switches."""
    (t0, r0), (t1, r1) = start, end
    return {
        "wall": t1 - t0,
        "cpu": (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime),
        "minflt": r1.ru_minflt - r0.ru_minflt,
        "nivcsw": r1.ru_nivcsw - r0.ru_nivcsw,
    }
