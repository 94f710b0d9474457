"""nemo_rpo.data stays below the framework: no megatron, hydra or omegaconf imports."""

from __future__ import annotations

import ast
from pathlib import Path

import nemo_rpo.data

FORBIDDEN = {"megatron", "hydra", "omegaconf"}


def test_data_package_imports_no_framework():
    for path in sorted(Path(nemo_rpo.data.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not {n.split(".")[0] for n in names} & FORBIDDEN, f"{path.name} imports {names}"
