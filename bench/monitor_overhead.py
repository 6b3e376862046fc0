"""What one sharpness measurement inside a training loop costs, as a fraction of a training step.

A Llama-style causal LM (random init, no download) trains with AdamW on generated token rows; the
script times, side by side on the same model and machine:

- ``step``: one training step (forward, backward, ``optimizer.step()``, ``zero_grad``) on
  ``--batch`` x ``--seq`` tokens, median over ``--steps``;
- ``measure``: one `SharpnessMonitor.measure` (the optimizer's direction with its state, then the
  warm-started eta_c search on each of ``--sets`` held-out batches of the same size), median over
  ``--measures`` after the first (cold) one, which is reported on its own.

``fraction`` is measure / step; ``amortised_every_N`` is that fraction over N steps, the overhead
of ``SharpnessCallback(every=N)``. Writes ``bench/results/monitor_overhead_<device>.json``.

    .venv/bin/python bench/monitor_overhead.py                    # CPU, small model
    python bench/monitor_overhead.py --device cuda --hidden 768 --layers 12 --seq 1024
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

from workers.curvature import SharpnessMonitor
from workers.curvature.monitor import causal_lm_loss

RESULTS = Path(__file__).parent / "results"


def rows(n: int, seq: int, vocab: int, seed: int, device: torch.device) -> torch.Tensor:
    """(n, seq) token ids with a learnable structure (arithmetic progressions mod vocab)."""
    gen = torch.Generator().manual_seed(seed)
    start = torch.randint(0, vocab, (n, 1), generator=gen)
    step = torch.randint(1, 7, (n, 1), generator=gen)
    return ((start + step * torch.arange(seq)) % vocab).to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sets", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--measures", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="result file (default: results/)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=max(1, args.hidden // 64),
        num_key_value_heads=max(1, args.hidden // 64),
        max_position_embeddings=args.seq,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device)
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
    train = rows(args.batch * (args.steps + 20), args.seq, args.vocab, seed=1, device=device)
    held_out = {
        f"set{i}": rows(args.batch, args.seq, args.vocab, seed=100 + i, device=device)
        for i in range(args.sets)
    }
    monitor = SharpnessMonitor(model, held_out, every=1, warn=False)

    def step(i: int) -> None:
        batch = train[i * args.batch : (i + 1) * args.batch]
        causal_lm_loss(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for i in range(3):  # warm-up: allocator, kernels, optimizer state
        step(i)
    step_times = []
    for i in range(3, 3 + args.steps):
        sync(device)
        started = time.perf_counter()
        step(i)
        sync(device)
        step_times.append(time.perf_counter() - started)

    measure_times, forwards = [], []
    for i in range(args.measures + 1):
        batch = train[i * args.batch : (i + 1) * args.batch]
        causal_lm_loss(model, batch).backward()  # the gradients a due step would have
        sync(device)
        started = time.perf_counter()
        report = monitor.measure(optimizer, step=i + 1)
        sync(device)
        measure_times.append(time.perf_counter() - started)
        forwards.append(report.forwards)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step_s = statistics.median(step_times)
    measure_s = statistics.median(measure_times[1:])
    fraction = measure_s / step_s
    result = {
        "what": "one SharpnessMonitor.measure vs one AdamW training step, same model and tokens",
        "machine": {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
            "note": "CPU figures from a 2-core machine shared with other jobs"
            if device.type == "cpu"
            else "",
        },
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "model": {
            "kind": "LlamaForCausalLM, random init, float32",
            "parameters": params,
            "hidden": args.hidden,
            "layers": args.layers,
            "vocab": args.vocab,
        },
        "tokens_per_batch": args.batch * args.seq,
        "eval_sets": args.sets,
        "step_seconds_median": step_s,
        "step_seconds": step_times,
        "measure_seconds_median_warm": measure_s,
        "measure_seconds_cold": measure_times[0],
        "measure_seconds": measure_times,
        "forwards_per_measure": forwards,
        "fraction_of_a_step": fraction,
        "amortised_every_N": {str(n): fraction / n for n in (10, 50, 100)},
    }
    out = args.out or RESULTS / f"monitor_overhead_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("fraction_of_a_step", "forwards_per_measure")}))
    print(f"step {step_s:.4f} s, measure {measure_s:.4f} s warm -> {out}")


if __name__ == "__main__":
    main()
