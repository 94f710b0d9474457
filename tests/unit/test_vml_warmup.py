"""MKL's vector math functions are first called on one thread (``cpu_support.warm_mkl_vml``).

Their first call from two threads at once sometimes computes one thread's share on a low-accuracy path
(issue 17's resume failure; measured by ``benchmarks/vml_race.py``, which is statistical and so not a
test). What is tested here is the contract that removes the race: ``configure_cpu`` (every CLI) and
``init_distributed`` (the Python API) call every VML-backed op once, on a single thread, before
returning, and leave the thread count as it was.
"""

import json
import os
import subprocess
import sys

PROBE = r"""
import json, sys, torch
from nemo_rpo.distributed import cpu_support, launch
calls = {}
for name in cpu_support._VML_OPS:
    def spy(*a, _name=name, _fn=getattr(torch, name), **k):
        calls.setdefault(_name, []).append((a[0].dtype is torch.float32, torch.get_num_threads()))
        return _fn(*a, **k)
    setattr(torch, name, spy)
if sys.argv[1] == "configure_cpu":
    threads = launch.configure_cpu(2, False)
else:
    from nemo_rpo.config.schema import ParallelConfig
    torch.set_num_threads(2)
    launch.init_distributed(ParallelConfig(), seed=1)
    threads = torch.get_num_threads()
again = cpu_support.warm_mkl_vml()
print(json.dumps({"calls": calls, "threads": threads, "after": torch.get_num_threads(), "again": again}))
"""


def _probe(entry: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", PROBE, entry], env=env, capture_output=True,
                          text=True, timeout=300, check=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def _check(result: dict) -> None:
    from nemo_rpo.distributed.cpu_support import _VML_OPS

    assert set(result["calls"]) == set(_VML_OPS)
    for name, calls in result["calls"].items():
        # float32 and float64 (ATen calls vmsX and vmdX), each on one thread
        assert sorted(c[0] for c in calls) == [False, True], name
        assert {c[1] for c in calls} == {1}, name
    assert result["threads"] == result["after"] == 2
    assert result["again"] is False  # once per process


def test_configure_cpu_warms_vml_on_one_thread() -> None:
    _check(_probe("configure_cpu"))


def test_init_distributed_warms_vml_for_the_python_api() -> None:
    _check(_probe("init_distributed"))
