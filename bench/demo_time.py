"""Wall time of `sharpmix demo` from an empty SHARPMIX_HOME (assets built) and again (reused).

Run: .venv/bin/python bench/demo_time.py  ->  bench/results/demo_cpu.json
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SHARPMIX = [sys.executable, "-m", "service.cli", "demo"]


def timed_demo(home: Path) -> dict[str, object]:
    """One `sharpmix demo` run: seconds, exit code and the recommendation line."""
    env = {**os.environ, "SHARPMIX_HOME": str(home), "SHARPMIX_ALLOWED_ROOTS": ""}
    start = time.perf_counter()
    out = subprocess.run(SHARPMIX, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    lines = [line for line in out.stdout.splitlines() if line.startswith("recommended")]
    return {"seconds": round(seconds, 1), "exit_code": out.returncode, "answer": lines[:1]}


def main() -> None:
    """Cold then warm, into one JSON naming the machine."""
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        cold = timed_demo(Path(tmp))
        warm = timed_demo(Path(tmp))
    record = {
        "what": "sharpmix demo: assets + a real sweep over HTTP on SQLite, in-process CPU worker",
        "machine": {
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "load_average_1m_before": load_before,
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "cold": cold,
        "warm": warm,
    }
    path = ROOT / "bench" / "results" / "demo_cpu.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
