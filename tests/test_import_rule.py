"""The compute core stays importable without the service side."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tools.check_imports import FORBIDDEN, violations

ROOT = Path(__file__).resolve().parent.parent


def test_static_rule_holds() -> None:
    assert violations() == []


def test_static_rule_catches_a_violation(tmp_path: Path) -> None:
    core = tmp_path / "workers" / "curvature"
    core.mkdir(parents=True)
    (core / "bad.py").write_text("import torch\nfrom service.db import models\nimport optuna\n")
    assert [v.split(": ", 1)[1] for v in violations(tmp_path)] == [
        "imports service.db",
        "imports optuna",
    ]


def test_core_imports_nothing_forbidden_at_runtime() -> None:
    code = (
        "import sys, importlib\n"
        "for name in ('workers.curvature', 'workers.data'):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError as exc:\n"
        "        if exc.name != name: raise\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""
