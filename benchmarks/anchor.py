"""The performance-anchor shape of ``shared/notes/performance-anchors.md`` and the per-step sample record,
shared by ``bench_step.py`` and ``trl_dpo.py`` (which runs in a venv that may lack megatron, so this
module needs nothing beyond the standard library)."""

from __future__ import annotations

import resource
import time

NUM_LAYERS, HIDDEN_SIZE, NUM_HEADS, FFN_HIDDEN_SIZE, VOCAB_SIZE = 4, 256, 8, 704, 8192
PROMPT_LEN, RESPONSE_LEN = 64, 192  # every sequence: 256 tokens


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
