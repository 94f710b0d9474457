"""nemo_rpo.losses imports only torch: guarded in a fresh interpreter and by an AST scan."""

import ast
import pathlib
import subprocess
import sys

import nemo_rpo.losses

FORBIDDEN = ("megatron", "hydra", "omegaconf")
# torch, the package itself, and the few standard-library modules the losses use.
ALLOWED = {"torch", "nemo_rpo", "math", "collections", "dataclasses", "typing", "__future__"}


def test_importing_losses_pulls_no_framework():
    code = (
        "import sys, nemo_rpo.losses; "
        f"bad = [m for m in sys.modules if m.startswith({FORBIDDEN!r})]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_losses_source_imports_only_torch_and_itself():
    root = pathlib.Path(nemo_rpo.losses.__file__).parent
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top in ALLOWED, f"{path.name}: {name}"
                assert not name.startswith("nemo_rpo.") or name.startswith("nemo_rpo.losses"), (
                    f"{path.name}: {name}"
                )
