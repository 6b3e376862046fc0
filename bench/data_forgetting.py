"""Build the demo assets and check that math-only fine-tuning makes the demo model forget.

Writes ``bench/results/data_forgetting_cpu.json``: build time, model size, pre-training losses,
and general/math held-out losses before and after fine-tuning on math only.

    .venv/bin/python bench/data_forgetting.py [--home DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import transformers

from sharpmix.assets.demo import build_demo_assets, measure_forgetting

RESULT = Path(__file__).parent / "results" / "data_forgetting_cpu.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="SHARPMIX_HOME to build in (default: a tmp dir)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    home = args.home or Path(tempfile.mkdtemp(prefix="sharpmix-demo-"))
    started = time.perf_counter()
    assets = build_demo_assets(home, force=True)
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    reused = build_demo_assets(home)
    reuse_s = time.perf_counter() - started
    assert reused == assets
    runs = [dataclasses.asdict(measure_forgetting(assets, steps=s)) for s in (20, 40)]
    manifest = assets.manifest()
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            # Other jobs share these cores; a high load average means slower, noisier numbers.
            "load_average_1m": round(os.getloadavg()[0], 2),
            "torch_threads": 2,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "model": {"parameters": manifest["parameters"], "config": manifest["config"]},
        "build_seconds": round(build_s, 1),
        "reuse_seconds": round(reuse_s, 3),
        "pretrain": manifest["pretrain"],
        "tokens": manifest["tokens"],
        "eval_loss_before_pretraining": manifest["eval_loss_before"],
        "eval_loss_after_pretraining": manifest["eval_loss_after"],
        "math_only_fine_tuning": runs,
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
