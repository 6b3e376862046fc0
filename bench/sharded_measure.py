"""eta_c of a model sharded over the GPUs of one host (FSDP2): wall time and memory per GPU.

One process per GPU, started by torchrun. Each rank builds the same random-init Llama shape in
float32 (seeded, on the CPU), shards it with `shard_model`, moves its shards to its GPU, and runs
the sharded pipeline of `workers/curvature/distributed.py`: per-domain gradients of two distinct
random-token domains, the fresh-AdamW direction of their 50/50 mix, eta_c on a held-out batch
(cold, from `--lr-guess`), then a warm measurement of the 60/40 mix and the one-step loss change
at the planned rate. Rank 0 writes the JSON: seconds and forwards per part, peak memory of every
GPU, and whether every rank's shards came back bit for bit.

    torchrun --standalone --nproc-per-node 2 bench/sharded_measure.py --shape llama8b \\
        --out $OUT/sharded_llama8b_2.json
    torchrun --standalone --nproc-per-node 2 bench/sharded_measure.py --shape tiny \\
        --out /tmp/sharded_tiny.json   # CPU, gloo: checks the script, times nothing useful

The scaling ratio is the same shape's wall time on N GPUs against 2 (or 1 where it fits: the exact
float32 path holds parameters, two domain gradients, the direction and a copy of the parameters,
five float32 copies of the model, split over the ranks). Losses are summed over micro-batches of
`--micro` sequences on every rank; with the same `--micro` on 1 and N ranks (and `--sequences`
a multiple of N times it) both runs see the same floats and search the same probes (on the CPU,
`--shape tiny --micro 4` gives the same eta_c and forwards on 1 and 2 ranks, bit for bit).
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from workers.curvature import adamw_direction, mixed_direction
from workers.curvature.distributed import (
    join,
    local_tensors,
    shard_model,
    sharded_domain_gradients,
    sharded_loss_change,
    sharded_measure,
)
from workers.data import micro_batched_loss

SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden=64, layers=2, heads=4, kv_heads=2, inter=128, vocab=512),
    "llama1b": dict(hidden=2048, layers=16, heads=32, kv_heads=8, inter=8192, vocab=128256),
    "llama8b": dict(hidden=4096, layers=32, heads=32, kv_heads=8, inter=14336, vocab=128256),
    "llama13b": dict(hidden=5120, layers=40, heads=40, kv_heads=40, inter=13824, vocab=32000),
}


def build(shape: dict[str, Any]) -> nn.Module:
    config = LlamaConfig(
        hidden_size=shape["hidden"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        intermediate_size=shape["inter"],
        vocab_size=shape["vocab"],
        max_position_embeddings=4096,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--sequences", type=int, default=8, help="per batch, all ranks together")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--micro", type=int, default=1, help="sequences per forward on a rank")
    parser.add_argument("--lr-guess", type=float, default=1e-5)
    parser.add_argument("--planned-lr", type=float, default=3e-5)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    ranks = join("nccl" if cuda else "gloo")
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    seq_len = min(args.seq_len, 64) if args.shape == "tiny" else args.seq_len
    report: dict[str, Any] = {
        "shape": args.shape,
        "config": SHAPES[args.shape],
        "world": ranks.world,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "sequences": args.sequences,
        "seq_len": seq_len,
    }

    start = time.perf_counter()
    model = shard_model(build(SHAPES[args.shape]), mesh=ranks.mesh(device.type)).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    report["parameters"] = sum(p.numel() for p in params)
    before = [t.clone() for t in local_tensors(params)]
    vocab = SHAPES[args.shape]["vocab"]
    g = torch.Generator().manual_seed(1)
    # Two domains on disjoint halves of the vocabulary, and a held-out batch like the first.
    shape = (args.sequences, seq_len)
    pt = torch.randint(0, vocab // 2, shape, generator=g).to(device)
    ft = torch.randint(vocab // 2, vocab, shape, generator=g).to(device)
    held = torch.randint(0, vocab // 2, shape, generator=g).to(device)
    report["load_seconds"] = time.perf_counter() - start

    def timed(name: str, fn: Any) -> Any:
        if cuda:
            torch.cuda.synchronize()
        dist.barrier(ranks.side)
        t0 = time.perf_counter()
        out = fn()
        if cuda:
            torch.cuda.synchronize()
        report[f"{name}_seconds"] = time.perf_counter() - t0
        return out

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model.train()
    loss_fn = functools.partial(micro_batched_loss, micro_batch=args.micro)
    grads = timed(
        "gradients",
        lambda: sharded_domain_gradients(model, loss_fn, [pt, ft], ranks, micro_batch=args.micro),
    )
    model.eval()
    fresh = functools.partial(adamw_direction, weight_decay=0.0)
    cold = timed(
        "cold",
        lambda: sharded_measure(
            model,
            loss_fn,
            mixed_direction(grads, [0.5, 0.5], fresh),
            held,
            ranks,
            lr_guess=args.lr_guess,
            params=grads.params,
        ),
    )
    direction = mixed_direction(grads, [0.6, 0.4], fresh)
    warm = timed(
        "warm",
        lambda: sharded_measure(
            model,
            loss_fn,
            direction,
            held,
            ranks,
            lr_guess=cold.eta if cold.status == "ok" else args.lr_guess,
            loss0=cold.loss0,
            params=grads.params,
        ),
    )
    change = timed(
        "loss_change",
        lambda: sharded_loss_change(
            model,
            loss_fn,
            direction,
            held,
            ranks,
            args.planned_lr,
            loss0=cold.loss0,
            params=grads.params,
        ),
    )
    for name, result in (("cold", cold), ("warm", warm)):
        report[name] = {
            "eta_c": result.eta,
            "status": result.status,
            "forwards": result.forwards,
            "loss0": result.loss0,
        }
    report["loss_change"] = change.delta
    restored = all(torch.equal(a, b) for a, b in zip(before, local_tensors(params), strict=True))
    # Per rank: peak GiB of its GPU and whether its shards came back bit for bit.
    mine = torch.tensor(
        [torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0, float(restored)],
        dtype=torch.float64,
    )
    table = torch.empty(ranks.world * 2, dtype=torch.float64)
    dist.all_gather_single(table, mine, group=ranks.side)
    report["peak_gib_per_rank"] = table[0::2].tolist()
    report["restored_every_rank"] = bool(table[1::2].all())
    if ranks.rank == 0:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2))
    # Leaving together: a rank that tears down gloo while another still uses it can abort.
    dist.barrier(ranks.side)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
