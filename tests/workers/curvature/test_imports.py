"""The curvature engine imports only torch, transformers, datasets, numpy and the stdlib."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[3] / "workers" / "curvature"
ALLOWED = {"torch", "transformers", "datasets", "numpy", "workers"}


def test_only_allowed_imports() -> None:
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top in ALLOWED or top in sys.stdlib_module_names, f"{path.name}: {name}"
                if top == "workers":
                    assert name.startswith("workers.curvature"), f"{path.name}: {name}"


def test_import_pulls_in_no_service_stack() -> None:
    code = (
        "import sys, workers.curvature; "
        "bad = [m for m in ('service', 'sqlalchemy', 'fastapi', 'optuna') if m in sys.modules]; "
        "print(bad); sys.exit(bool(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parents[1]
    )
    assert out.returncode == 0, out.stdout + out.stderr
