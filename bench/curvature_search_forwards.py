"""Forward passes per critical-sharpness measurement along a real (tiny) training run, on CPU.

A tiny OLMo-2 trains with AdamW on a generated Markov language; every `--every` steps, lambda_c is
measured along the optimizer's own next update direction on the step's batch, once with the
baseline search ("bisect"), once with the model-placed search ("quadratic") and once with the
model-placed search given the line's slope `-g.d` (free here: `g` is the batch's own gradient, the
one the optimizer's direction is computed from), each warm-started from its own previous eta_c.
Writes bench/results/search_forwards_cpu.json.

    .venv/bin/python bench/curvature_search_forwards.py
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import Olmo2Config, Olmo2ForCausalLM

from workers.curvature import (
    CriticalLR,
    direction_params,
    line_slope,
    measure,
    update_direction,
)

V, T, B = 64, 32, 16


def lm_loss(model: nn.Module, ids: Tensor) -> Tensor:
    return model(input_ids=ids, labels=ids).loss  # type: ignore[no-any-return]


def markov_batches(n: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    P = torch.softmax(3.0 * torch.randn(V, V, generator=gen), dim=-1)  # (V, V) transitions
    x = torch.empty(n * B, T, dtype=torch.long)
    x[:, 0] = torch.randint(0, V, (n * B,), generator=gen)
    for t in range(1, T):
        x[:, t] = torch.multinomial(P[x[:, t - 1]], 1, generator=gen).squeeze(1)
    return x.view(n, B, T)  # (steps, B, T)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=3)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--out", default="bench/results/search_forwards_cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = Olmo2Config(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        vocab_size=V,
        max_position_embeddings=T,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    model = Olmo2ForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    data = markov_batches(args.steps, seed=1)
    methods = ["bisect", "quadratic", "quadratic_slope"]
    results: dict[str, list[CriticalLR]] = {m: [] for m in methods}
    guess = dict.fromkeys(methods, args.lr)
    start = time.perf_counter()
    for step in range(args.steps):
        opt.zero_grad()
        model.train()
        lm_loss(model, data[step]).backward()
        if step % args.every == 0:
            d = update_direction(opt)  # AdamW with its real state (fresh at step 0)
            params = direction_params(opt)
            slope = line_slope([p.grad for p in params], d)  # type: ignore[misc]
            for m in methods:
                r = measure(
                    model,
                    lm_loss,
                    d,
                    data[step],
                    lr_guess=guess[m],
                    method="bisect" if m == "bisect" else "quadratic",
                    params=params,
                    slope=slope if m == "quadratic_slope" else None,
                )
                if r.status == "ok":
                    guess[m] = r.eta
                results[m].append(r)
        opt.step()
    summary: dict[str, object] = {
        "what": "forward passes per lambda_c measurement along an AdamW training run, warm starts",
        "model": "OLMo-2-style, hidden 64, 2 layers, vocab 64; batch 16 x 32 tokens",
        "steps": args.steps,
        "every": args.every,
        "tol": 1 / 16,
        "counting": "search = probes of critical_lr; total = search + the L(theta) forward",
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "seconds": round(time.perf_counter() - start, 1),
    }
    for m, rs in results.items():
        search = [r.forwards - 1 for r in rs]
        summary[m] = {
            "measurements": len(rs),
            "median_search_forwards": statistics.median(search),
            "mean_search_forwards": round(statistics.mean(search), 3),
            "max_search_forwards": max(search),
            "median_total_forwards": statistics.median(r.forwards for r in rs),
            "statuses": {
                s: sum(r.status == s for r in rs)
                for s in ("ok", "increases_immediately", "no_increase")
            },
            "bracket_within_tol": all(
                1 - r.lower / r.upper <= 1 / 16 for r in rs if r.status == "ok"
            ),
        }
    eta_b = [r.eta for r in results["bisect"]]
    for m in ("quadratic", "quadratic_slope"):
        eta_q = [r.eta for r in results[m]]
        summary[f"max_relative_eta_difference_{m}_vs_bisect"] = max(
            abs(a - b) / a for a, b in zip(eta_b, eta_q, strict=True) if a > 0
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
