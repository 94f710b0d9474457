"""Fault injection lives in tests (tests/conftest.py, tests/functional/_faulty_train.py): no module of the
package reads a test switch from the environment on the step or save path."""

import pathlib

import nemo_rpo


def test_no_test_switch_in_the_package():
    root = pathlib.Path(nemo_rpo.__file__).parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py") if "NEMO_RPO_TEST" in p.read_text()]
    assert not offenders, offenders
