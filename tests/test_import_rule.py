"""The layers import one way (tools/check_imports.py), statically and at run time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tools.check_imports import FORBIDDEN, violations

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.unit


def test_static_rule_holds() -> None:
    assert violations() == []


def _refused(root: Path, files: dict[str, str]) -> list[str]:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return [v.split(": ", 1)[1].split(" (")[0] for v in violations(root)]


def test_the_core_imports_no_service_side(tmp_path: Path) -> None:
    bad = "import torch\nfrom service.db import models\nimport optuna\n"
    bad += "from contract.paths import resolve_under_roots\nfrom contract.spec import SweepSpec\n"
    assert _refused(tmp_path, {"workers/curvature/bad.py": bad}) == [
        "imports service.db.models",
        "imports optuna",
        "imports contract.spec.SweepSpec",
    ]


def test_the_contract_imports_only_pydantic_and_the_standard_library(tmp_path: Path) -> None:
    bad = "import json\nfrom pydantic import BaseModel\nimport torch\nfrom service import errors\n"
    assert _refused(tmp_path, {"contract/bad.py": bad}) == [
        "imports torch",
        "imports service.errors",
    ]


def test_service_never_imports_workers_or_the_entry_points(tmp_path: Path) -> None:
    bad = "from contract.spec import SweepSpec\nfrom workers.worker import Worker\n"
    bad += "import sharpmix.cli\n"
    assert _refused(tmp_path, {"service/cli.py": bad}) == [
        "imports workers.worker.Worker",
        "imports sharpmix.cli",
    ]


def test_only_the_worker_loop_reaches_the_queue(tmp_path: Path) -> None:
    loop = "from service.db import queue\nfrom service.api.schemas import sweep_out\n"
    other = "from service.db.queue import ClaimedTask\nfrom contract.results import TaskResult\n"
    assert _refused(tmp_path, {"workers/worker.py": loop, "workers/sweep.py": other}) == [
        "imports service.db.queue.ClaimedTask",
        "imports service.api.schemas.sweep_out",
    ]


def _loaded_after(modules: tuple[str, ...], tops: tuple[str, ...]) -> list[str]:
    code = (
        "import sys, importlib\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in {tops!r})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return [name for name in out.stdout.strip().split(",") if name]


def test_core_imports_nothing_forbidden_at_runtime() -> None:
    assert _loaded_after(("workers.curvature", "workers.data"), FORBIDDEN) == []


def test_the_contract_and_the_api_load_no_worker() -> None:
    heavy = ("workers", "sharpmix", "torch", "transformers", "optuna", "sqlalchemy", "fastapi")
    assert _loaded_after(("contract",), heavy) == []
    assert (
        _loaded_after(("service.api.main", "service.client"), ("workers", "sharpmix", "torch"))
        == []
    )
