"""Wall time of `sharpmix demo` from an empty SHARPMIX_HOME (assets built) and again (reused).

The budget for the cold run is 3 minutes on 2 cores. The machine's load average is recorded
before and after each run, and the asset build's own seconds (from the demo manifest), because
on a shared machine other processes' load moves these figures a lot.

Run: .venv/bin/python bench/demo_time.py [--cold-only]  ->  bench/results/demo_cpu.json
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
SHARPMIX = [sys.executable, "-m", "sharpmix.cli", "demo"]
BUDGET_S = 180.0


def timed_demo(home: Path) -> dict[str, object]:
    """One `sharpmix demo` run: seconds, exit code, the recommendation line, the trajectories."""
    env = {**os.environ, "SHARPMIX_HOME": str(home), "SHARPMIX_ALLOWED_ROOTS": ""}
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    out = subprocess.run(SHARPMIX, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    printed = out.stdout.splitlines()
    lines = [line for line in printed if line.startswith("recommended")]
    # The trajectory table as printed: drift at K, forecast at N and its interval, per ratio.
    table: list[str] = []
    for line in printed:
        if line.startswith("trajectories:") or (table and line.strip()):
            if line.startswith(("trajectory plot", "plot:")):
                break
            table.append(line)
    manifest = json.loads((home / "demo" / "manifest.json").read_text())
    return {
        "seconds": round(seconds, 1),
        "within_budget_s": BUDGET_S,
        "within_budget": seconds <= BUDGET_S,
        "exit_code": out.returncode,
        "answer": lines[:1],
        "trajectories": table,
        "asset_build_seconds_in_manifest": round(manifest["build_seconds"], 1),
        "pretrain_seconds_in_manifest": round(manifest["pretrain"]["seconds"], 1),
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def main() -> None:
    """Cold then warm, into one JSON naming the machine."""
    # --cold-only: the figure the budget is about, when a loaded machine makes both too long.
    cold_only = "--cold-only" in sys.argv[1:]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        cold = timed_demo(Path(tmp))
        warm = None if cold_only else timed_demo(Path(tmp))
    record = {
        "what": "sharpmix demo: assets + a real sweep over HTTP on SQLite, in-process CPU worker",
        "machine": {
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "load_average_1m_before": load_before,
            "python": platform.python_version(),
            "torch": torch.__version__,
            # What `make demo` exports (and the sharpmix command defaults to): how long torch's
            # OpenMP threads spin, which a loaded machine punishes (bench/omp_wait.py).
            "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT", "10000 (the command's default)"),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        },
        "cold": cold,
        "warm": warm,
    }
    path = ROOT / "bench" / "results" / "demo_cpu.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
