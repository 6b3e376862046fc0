"""The curvature engine imports only torch, transformers, datasets, numpy and the stdlib; Triton
only in its two kernel files, and there optionally (the engine imports and runs without it)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[3] / "workers" / "curvature"
ALLOWED = {"torch", "transformers", "datasets", "numpy", "workers"}
# module -> the files that may import it, guarded
OPTIONAL = {"triton": {"attention.py", "compensated.py"}}


def _guarded(tree: ast.Module, node: ast.stmt) -> bool:
    """Whether `node` sits in a `try` whose handlers catch ImportError."""
    for parent in ast.walk(tree):
        if isinstance(parent, ast.Try) and node in parent.body:
            caught = [h.type for h in parent.handlers]
            return any(isinstance(t, ast.Name) and t.id == "ImportError" for t in caught)
    return False


def test_only_allowed_imports() -> None:
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in OPTIONAL and path.name in OPTIONAL[top]:
                    assert _guarded(tree, node), f"{path.name}: {name} outside try/ImportError"
                    continue
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


def test_runs_without_triton() -> None:
    # A CPU-only install: `import triton` fails, the compensated path keeps float32 SDPA.
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, workers.curvature\n"
        "from workers.curvature.attention import compensated_attention, kernel_runs_on\n"
        "q = torch.randn(1, 2, 5, 8)\n"
        "ref = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)\n"
        "assert not kernel_runs_on(q.device)\n"
        "assert torch.equal(compensated_attention(q, q, q), ref)\n"
        "from workers.curvature.compensated import split_bf16\n"
        "hi, lo = split_bf16(q)\n"
        "assert torch.allclose(hi.float() + lo.float(), q, rtol=2**-16, atol=0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parents[1]
    )
    assert out.returncode == 0, out.stdout + out.stderr
