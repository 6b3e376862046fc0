"""Run the whole evidence suite in one process: EoS, pre-training, relative sharpness, grid, costs.

Usage (GPU, one device call, ~9 minutes on an H100):

    PYTHONUNBUFFERED=1 python3 -m bench.science.run_all --out "$OUT" --budget 540

`--parts pretrain,mixing` leaves out the EoS experiment (run 2 did, to give the fine-tuning grid
the time for both seeds); `--seeds 2` stops the grid after two whole seeds.

CPU debugging: `python -m bench.science.run_all --tiny` (writes bench/science/results/tiny/).

Each part is wrapped so a failure is recorded (`error` in run.json) and the others still run,
and every JSON is rewritten as results arrive, so a run stopped at the time limit keeps what it
had. Files: run.json (machine, timings, errors), eos.json, pretrain.json, mixing.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import transformers

from bench.science.common import build_corpus, setup_torch, write_json
from bench.science.eos import EosConfig, run_eos
from bench.science.mixing import (
    MixingConfig,
    config_dict,
    cost_comparison,
    finetune_grid,
    relative_sharpness,
)
from bench.science.pretrain import PretrainConfig, run_pretrain

# Documents per split. General docs are ~33 tokens: 300k docs ~ 10M tokens, so pre-training
# sees each document a few times; the held-out sets must cover B * dir_rows + eval_rows rows.
DOCS = {
    "general": 300_000,
    "pt_math": 20_000,
    "ft_math": 60_000,
    "general_eval": 8_000,
    "math_eval": 8_000,
}
TINY_DOCS = {"general": 600, "pt_math": 100, "ft_math": 200, "general_eval": 150, "math_eval": 150}
PARTS = ("eos", "pretrain", "mixing")


def parse_parts(text: str) -> tuple[str, ...]:
    """`eos,pretrain,mixing` -> the parts to run; mixing needs pretrain (its checkpoint)."""
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown parts {unknown}; choose from {PARTS}")
    if "mixing" in parts and "pretrain" not in parts:
        raise argparse.ArgumentTypeError("mixing fine-tunes the pre-trained model: add pretrain")
    return parts


def main() -> None:
    """Parse, build the corpus, run every part under the time budget, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU-debug sizes")
    parser.add_argument("--out", type=Path, default=None, help="default: $OUT or results/tiny")
    parser.add_argument("--budget", type=float, default=540.0, help="wall seconds in all")
    parser.add_argument(
        "--parts", type=parse_parts, default=PARTS, help="comma list of eos,pretrain,mixing"
    )
    parser.add_argument(
        "--seeds", type=int, default=None, help="grid seeds (default: the config's, time allowing)"
    )
    args = parser.parse_args()
    parts: tuple[str, ...] = args.parts
    start = time.perf_counter()
    out = args.out or Path(os.environ.get("OUT", "bench/science/results/tiny"))
    device = setup_torch(threads=1 if args.tiny else None)
    tiny = args.tiny
    run: dict[str, Any] = {
        "argv": sys.argv,
        "tiny": tiny,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "budget_s": args.budget,
        "parts_run": list(parts),
        "parts": {},
    }

    def part(name: str, fn: Any) -> Any:
        # Records seconds or the traceback of one part and keeps going.
        t0 = time.perf_counter()
        try:
            result = fn()
            run["parts"][name] = {"seconds": time.perf_counter() - t0, "ok": True}
            return result
        except Exception as exc:
            traceback.print_exc()
            run["parts"][name] = {
                "seconds": time.perf_counter() - t0,
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
            }
            return None
        finally:
            write_json(out / "run.json", run)

    print(f"device {run['device']}", flush=True)
    seq_len = PretrainConfig.tiny().seq_len if tiny else PretrainConfig().seq_len
    corpus = part(
        "corpus",
        lambda: build_corpus(TINY_DOCS if tiny else DOCS, seq_len=seq_len, vocab_size=4096, seed=0),
    )
    if corpus is not None:
        run["corpus"] = {"vocab_size": corpus.vocab_size, "tokens": corpus.tokens}
        print(f"corpus {corpus.tokens} vocab {corpus.vocab_size} in {corpus.seconds:.1f}s")

    def work() -> None:
        # Every part after the corpus; returns early where a part it needs failed.
        if "eos" in parts:
            eos_cfg = EosConfig.tiny() if tiny else EosConfig()
            eos = part("eos", lambda: run_eos(eos_cfg, device, deadline=start + 0.15 * args.budget))
            if eos is not None:
                write_json(out / "eos.json", eos)

        if corpus is None or "pretrain" not in parts:
            return
        pre_cfg = PretrainConfig.tiny() if tiny else PretrainConfig()
        trained = part(
            "pretrain",
            lambda: run_pretrain(pre_cfg, corpus, device, checkpoint=Path("/tmp/sharpmix_ckpt.pt")),
        )
        if trained is None:
            return
        model, pre_record = trained
        write_json(out / "pretrain.json", pre_record)
        if "mixing" not in parts:
            return

        mix_cfg = MixingConfig.tiny() if tiny else MixingConfig()
        if args.seeds is not None:
            mix_cfg = dataclasses.replace(mix_cfg, seeds=tuple(range(args.seeds)))
        mixing: dict[str, Any] = {"config": config_dict(mix_cfg)}

        def save_mixing() -> None:
            write_json(out / "mixing.json", mixing)

        sweep = part("sweep", lambda: relative_sharpness(model, corpus, mix_cfg, device))
        if sweep is not None:
            mixing["sweep"] = sweep
            save_mixing()
        costs = part("costs", lambda: cost_comparison(model, corpus, mix_cfg, device))
        if costs is not None:
            mixing["costs"] = costs
            save_mixing()

        def on_cell(cells: list[dict[str, Any]], base: dict[str, float]) -> None:
            mixing["grid"] = {"cells": cells, "base": base, "partial": True}
            save_mixing()

        grid = part(
            "grid",
            lambda: finetune_grid(
                model, corpus, mix_cfg, device, deadline=start + args.budget, on_cell=on_cell
            ),
        )
        if grid is not None:
            mixing["grid"] = grid
            save_mixing()

    work()
    run["total_seconds"] = time.perf_counter() - start
    write_json(out / "run.json", run)
    print(f"done in {run['total_seconds']:.1f}s", flush=True)


if __name__ == "__main__":
    main()
