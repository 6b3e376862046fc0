"""Benchmark of one sweep on a worker, the service's hot path (`workers/sweep.py`), on a GPU.

What a `sharpmix worker` does with a claimed sweep, timed part by part: load a Hugging Face model
from a local directory (safetensors), tokenise and pack the data, collect the per-domain gradients
once, take L(theta) of every evaluation batch, then measure eta_c and the one-step loss change at
the planned rate for each ratio (warm-started from the previous ratio). The model is an
OLMo-2-1B-shaped random init (speed only: its eta_c values mean nothing) in bf16, so the default
precision path (float32 compute for the perturbed forwards) is what is timed.

Run on the device (wheels for pydantic, sqlalchemy and datasets carried in .whl/):
    python3 -m bench.sweep_gpu --out $OUT
CPU check of the same code at toy size: .venv/bin/python -m bench.sweep_gpu --tiny
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, Olmo2Config

from contract.mix import Candidate
from contract.spec import SweepSpec
from sharpmix.assets.corpora import general_documents, math_documents
from sharpmix.assets.vocab import train_tokenizer
from workers.data import LoadPolicy
from workers.sweep import default_micro_batch_tokens, prepare

SHAPES = {
    # hidden, layers, heads, intermediate, vocab
    "1b": (2048, 16, 16, 8192, 100352),
    "tiny": (64, 2, 4, 128, 1024),
}


def build_assets(root: Path, shape: str, dtype: torch.dtype, documents: int) -> dict[str, float]:
    """Generated corpora, a tokenizer trained on them, and a random-init model saved to disk."""
    t0 = time.perf_counter()
    general = general_documents(documents, seed=1, world_seed=0)
    arithmetic = math_documents(documents, seed=2)
    for name, docs in (("general.jsonl", general), ("math.jsonl", arithmetic)):
        (root / name).write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    tokenizer = train_tokenizer(general[:2000] + arithmetic[:2000], vocab_size=1024)
    hidden, layers, heads, intermediate, vocab = SHAPES[shape]
    config = Olmo2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=4096,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    params = sum(p.numel() for p in model.parameters())
    return {"seconds": time.perf_counter() - t0, "parameters": float(params)}


def main() -> None:
    """Parse, build, time, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="toy sizes on the CPU")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--ratios", default="0,0.1,0.3,0.5,1")
    parser.add_argument("--batches", type=int, default=2)
    args = parser.parse_args()

    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    shape = "tiny" if args.tiny else "1b"
    seq_len, sequences = (64, 4) if args.tiny else (2048, 8)
    ratios = [float(r) for r in args.ratios.split(",")]
    record: dict[str, Any] = {
        "what": "one sweep on a worker: workers.sweep.prepare + measure_ratio per ratio",
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "shape": shape,
        "dtype": str(dtype),
        "tokens_per_batch": seq_len * sequences,
        "batches": args.batches,
        "ratios": ratios,
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        record["assets"] = build_assets(root, shape, dtype, 400 if args.tiny else 12000)
        spec = SweepSpec.model_validate(
            {
                "model": {"path": "model"},
                "pretraining": {"name": "general", "path": "general.jsonl"},
                "finetuning": [{"name": "math", "path": "math.jsonl"}],
                "ratios": ratios,
                "learning_rate": 3e-5,
                "seq_len": seq_len,
                "batch_tokens": seq_len * sequences,
                "batches": args.batches,
            }
        )
        policy = LoadPolicy(allowed_roots=(root,), cache_dir=root / "cache")
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        prepared = prepare(
            spec,
            policy,
            device=device,
            dtype=dtype,
            micro_batch_tokens=default_micro_batch_tokens(device),
        )
        gradient_device = prepared.gradients[0].grads[0][0].device
        record["setup"] = {
            "gradients_kept_on": str(gradient_device),
            "seconds": prepared.setup_seconds,
            "backward_passes": prepared.backwards,
            "reference_forwards": prepared.setup_forwards,
        }
        print(f"setup {prepared.setup_seconds:.1f}s", flush=True)
        per_ratio = []
        for ratio in ratios:
            t0 = time.perf_counter()
            measured = prepared.measure_ratio(Candidate(ratio))
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            measurements = len(measured.measurements) * args.batches
            per_ratio.append(
                {
                    "ratio": ratio,
                    "seconds": seconds,
                    "forwards": measured.forwards,
                    "measurements": measurements,
                    "forwards_per_measurement": measured.forwards / measurements,
                    "seconds_per_forward": seconds / measured.forwards,
                    "eta_c": {m.eval_set: m.eta_c for m in measured.measurements},
                    "status": {m.eval_set: m.status for m in measured.measurements},
                }
            )
            print(json.dumps(per_ratio[-1]), flush=True)
        record["per_ratio"] = per_ratio
        record["sweep_seconds"] = prepared.setup_seconds + sum(r["seconds"] for r in per_ratio)
        if device == "cuda":
            record["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    args.out.mkdir(parents=True, exist_ok=True)
    name = "sweep_tiny_cpu.json" if args.tiny else "sweep_gpu_h100.json"
    (args.out / name).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out / name}")


if __name__ == "__main__":
    main()
