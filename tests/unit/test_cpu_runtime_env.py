"""The CLIs' CPU runtime environment (``nemo_rpo.cli.CPU_RUNTIME_ENV``): set before torch loads, a user's
value kept; MKL then runs in its conditional-numerical-reproducibility mode (docs/determinism.md)."""

import os
import subprocess
import sys

import pytest

PROBE = (
    "import nemo_rpo.cli, os, torch; from nemo_rpo.distributed.determinism import _mkl_branch; "
    "get = lambda k: os.environ.get(k, '-'); "
    "print(get('OMP_WAIT_POLICY'), get('GOMP_SPINCOUNT'), get('MKL_CBWR'), _mkl_branch())"
)


def _probe(**env: str) -> list[str]:
    keys = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_DYNAMIC", "OMP_DYNAMIC", "MKL_CBWR")
    clean = {k: v for k, v in os.environ.items() if k not in keys}
    done = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                          timeout=300, check=True)  # fmt: skip
    return done.stdout.split()


def test_defaults_reach_mkl() -> None:
    policy, spin, cbwr, branch = _probe()
    assert (policy, spin, cbwr) == ("PASSIVE", "1000", "AUTO")
    if branch == "None":
        pytest.skip("this torch build does not expose MKL's mkl_serv_cbwr_get")
    assert branch == "AUTO"


def test_a_users_values_are_kept() -> None:
    policy, spin, cbwr, branch = _probe(OMP_WAIT_POLICY="ACTIVE", MKL_CBWR="COMPATIBLE")
    # The waiting policy is one setting: a user's OMP_WAIT_POLICY gets no spin count beside it (in
    # libgomp GOMP_SPINCOUNT would override ACTIVE's unbounded spin).
    assert (policy, spin, cbwr) == ("ACTIVE", "-", "COMPATIBLE")
    assert branch in ("COMPATIBLE", "None")
    assert _probe(GOMP_SPINCOUNT="30000")[:2] == ["-", "30000"]
