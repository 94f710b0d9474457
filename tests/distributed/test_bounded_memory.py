"""``trainer.keep_freed_memory`` stays bounded where shapes change every call (issue 20, item 5).

Keeping glibc's freed memory makes the heap grow without bound under decoding without a KV cache (each
step's blocks a token larger than the holes the last one left): on SmolLM2-135M it reached 24 GB and was
killed. The policy's forward without autograd runs with glibc's own policy
(``cpu_support.glibc_malloc_defaults``), so its peak stays within 1.25x of the plain allocator's. Three
fresh processes of ``_memory_worker.py``; the unscoped control shows the run does reproduce the growth.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from _launch import run_workers

pytestmark = pytest.mark.distributed

WORKER = Path(__file__).with_name("_memory_worker.py")
STEPS = 40


def _peak_mb(mode: str) -> float:
    output = run_workers(WORKER, 1, [mode, str(STEPS)])
    if "skip:" in output:
        pytest.skip(output.strip())
    return float(re.search(r"peak_mb=([0-9.]+)", output).group(1))


def test_decoding_without_kv_cache_stays_near_the_plain_allocator_peak() -> None:
    plain, kept, unscoped = _peak_mb("plain"), _peak_mb("kept"), _peak_mb("kept_unscoped")
    assert unscoped > 1.5 * plain, (plain, unscoped)  # the growth is reproduced ...
    assert kept <= 1.25 * plain, (plain, kept)  # ... and the policy's forward does not show it
