"""Training-step time of the demo model with torch's OpenMP threads spinning or sleeping.

torch's CPU kernels run on OpenMP threads, which by default spin while they wait for work. On a
machine whose cores are busy with anything else, spinning threads steal the time the working
ones need. This measures one AdamW step of the demo model (16 x 128 tokens) with
``OMP_WAIT_POLICY`` ``ACTIVE``, unset (libgomp's default spin count), a shorter
``GOMP_SPINCOUNT`` and ``PASSIVE`` (each in a fresh process: they are read when torch loads), on
an idle machine and beside ``--busy`` processes that each spin one core.

Run: .venv/bin/python bench/omp_wait.py [--busy 2] --out bench/results/omp_wait_cpu.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS, WARMUP = 15, 3


def step_seconds() -> float:
    """Seconds per training step of the demo model, in this process."""
    import torch
    from transformers import Olmo2ForCausalLM

    from sharpmix.assets.demo import demo_config

    torch.manual_seed(0)
    model = Olmo2ForCausalLM(demo_config(512, 0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = torch.randint(512, (16, 128))  # (B, T)
    for i in range(WARMUP + STEPS):
        if i == WARMUP:
            start = time.perf_counter()
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / STEPS


def _spin() -> None:
    while True:
        pass


# Each setting in a fresh process, from a clean slate of both variables.
SETTINGS: dict[str, dict[str, str]] = {
    "ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"},
    "default": {},
    "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
    "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
}


def measure(setting: dict[str, str]) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(setting)
    out = subprocess.run(
        [sys.executable, __file__, "--child"], env=env, cwd=ROOT, capture_output=True, text=True
    )
    out.check_returncode()
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Both policies, idle and beside busy processes, into one JSON naming the machine."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=2, help="spinning processes for 'loaded'")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/omp_wait_cpu.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(step_seconds())
        return
    record: dict[str, object] = {
        "what": "seconds per AdamW step of the demo model (16 x 128 tokens), torch default threads",
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_1m_before": os.getloadavg()[0],
        },
        "busy_processes": args.busy,
    }
    for name, busy in (("idle", 0), ("loaded", args.busy)):
        spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(busy)]
        for p in spinners:
            p.start()
        try:
            record[name] = {label: round(measure(env), 4) for label, env in SETTINGS.items()}
        finally:
            for p in spinners:
                p.terminate()
                p.join()
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
