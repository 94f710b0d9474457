"""A built wheel works from any directory: ``nemo-rpo-train`` finds its configs inside the installed package.

The wheel is built from a copy of the sources (so the checkout gets no ``build/``), installed with
``--no-deps`` into a fresh venv that sees this environment's torch and megatron, and its console
script trains 5 steps from ``/``. The checkout is also installed (editable) in this environment; the
venv's own copy must shadow it, which the test checks.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.functional

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("setup.py", "pyproject.toml", "README.md", "MANIFEST.in", "conf", "nemo_rpo")


def _run(argv: list[str], *, cwd: Path, env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


def test_wheel_installs_and_trains_from_any_directory(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NEMO_RPO_CONF_DIR")}
    env["OMP_NUM_THREADS"] = "2"
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(path, src / name)

    dist = tmp_path / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(src)],
         cwd=tmp_path, env=env, timeout=300)  # fmt: skip
    (wheel,) = dist.glob("nemo_rpo-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "nemo_rpo/conf/train.yaml",
        "nemo_rpo/conf/loss/rpo_bwd.yaml",
        "nemo_rpo/assets/synthetic_prefs_k4.jsonl",
    } <= names

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
         cwd=tmp_path, env=env, timeout=120)  # fmt: skip
    python = venv / "bin" / "python"
    # --system-site-packages reaches the base interpreter's packages only; when pytest runs in a venv
    # (as the README advises), torch and megatron live there, so the new venv reads this one's too.
    # They come after the venv's own site-packages, so the wheel's nemo_rpo shadows the editable one.
    (site_dir,) = venv.glob("lib/python3*/site-packages")
    parents = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (site_dir / "_parent_env.pth").write_text(f"import site; [site.addsitedir(p) for p in {parents!r}]\n")
    # --without-pip: this environment's pip, run by the venv's interpreter, installs into the venv.
    _run([str(python), "-m", "pip", "--disable-pip-version-check", "install", "--no-deps", "-q", str(wheel)],
         cwd=tmp_path, env=env, timeout=300)  # fmt: skip

    where = _run([str(python), "-c", "import nemo_rpo; from nemo_rpo.config.store import conf_dir; "
                  "print(nemo_rpo.__file__); print(conf_dir())"], cwd=Path("/"), env=env, timeout=120)  # fmt: skip
    package_file, conf = map(Path, where.stdout.split())
    assert package_file.is_relative_to(venv) and "site-packages" in package_file.parts, package_file
    assert conf == package_file.parent / "conf"

    exp = tmp_path / "run"
    proc = _run([str(venv / "bin" / "nemo-rpo-train"), "trainer.max_steps=5", f"exp_dir={exp}",
                 "logging.progress_bar=false", "logging.tensorboard=false"], cwd=Path("/"), env=env, timeout=600)  # fmt: skip
    rows = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(r["loss"] is not None for r in rows)
    assert "step     5/5" in proc.stdout
