"""GPU cost and precision of critical-sharpness measurements.

Sections, each in its own try/except so one failure (e.g. an OOM) keeps the others; the JSON is
rewritten after every section:

- `b1`: OLMo-2-1B shape, bf16, SDPA, random init, 8 x 2048 tokens: forward and forward+backward
  time, TFLOP/s, then one measurement (fresh-AdamW direction from one backward, lr_guess 1e-5,
  tol 1/16) cold and warm-started, for the naive bf16 path, the fp32 reference and the split
  path: seconds, forwards, eta_c, status, peak memory.
- `b7`: the 7B shape with 4 x 2048 tokens (gradient accumulated over micro-batches of one
  sequence to keep the backward small): does a measurement fit on one 80 GB GPU, and its cost.
- `trained`: a small OLMo-2 trained on the GPU for about a minute on a generated Markov language;
  eta_c and the one-step loss change at lr 1e-5 by every path against the fp32 reference.

    PYTHONUNBUFFERED=1 python bench/curvature_gpu.py --out $OUT/curvature_gpu.json
    .venv/bin/python bench/curvature_gpu.py --tiny --out /tmp/curvature_gpu_tiny.json  # CPU check
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Olmo2Config, Olmo2ForCausalLM

from workers.curvature import (
    CriticalLR,
    Precision,
    adamw_direction,
    loss_change,
    measure,
)

RESULTS: dict[str, Any] = {}
START = time.perf_counter()


def elapsed() -> float:
    return time.perf_counter() - START


def save(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(RESULTS, indent=2, default=str) + "\n")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    """Median wall seconds of `repeat` calls (synchronised), and the last result."""
    times, out = [], None
    for _ in range(repeat):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def peak_gb() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def lm_loss(model: nn.Module, ids: Tensor) -> Tensor:
    return model(input_ids=ids, labels=ids).loss  # type: ignore[no-any-return]


def build(cfg: Olmo2Config, device: str, dtype: torch.dtype) -> nn.Module:
    cfg._attn_implementation = "sdpa"
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Olmo2ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(before)
    return model.eval()


def olmo_config(hidden: int, layers: int, heads: int, inter: int, vocab: int) -> Olmo2Config:
    return Olmo2Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
        vocab_size=vocab,
        max_position_embeddings=4096,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )


def fresh_adamw_direction(
    model: nn.Module, ids: Tensor, micro: int, dtype: torch.dtype
) -> list[Tensor]:
    """Fresh-AdamW direction of the batch's mean loss, accumulated over micro-batches of `micro`
    sequences; frees each gradient as soon as its direction exists."""
    model.zero_grad(set_to_none=True)
    chunks = ids.split(micro)
    for chunk in chunks:
        (lm_loss(model, chunk) * (len(chunk) / len(ids))).backward()
    direction = []
    for p in model.parameters():
        assert p.grad is not None
        direction.append(adamw_direction([p], [p.grad], weight_decay=0.0, dtype=dtype)[0])
        p.grad = None  # free as we go: grads and direction never coexist in full
    return direction


def run_measurements(
    model: nn.Module,
    direction: list[Tensor],
    ids: Tensor,
    precisions: list[Precision],
    lr_guess: float,
    report: dict[str, Any],
    out: Path,
) -> None:
    for precision in precisions:
        try:
            free()
            reset_peak()
            cold_s, cold = timed(
                lambda p=precision: measure(
                    model, lm_loss, direction, ids, lr_guess=lr_guess, precision=p
                )
            )
            entry: dict[str, Any] = {"cold": describe(cold, cold_s)}
            if cold.status == "ok":
                warm_s, warm = timed(
                    lambda p=precision, g=cold.eta: measure(
                        model, lm_loss, direction, ids, lr_guess=g * 1.1, precision=p
                    )
                )
                entry["warm_start_10pct_off"] = describe(warm, warm_s)
            entry["peak_gb"] = round(peak_gb(), 2)
            report[precision] = entry
        except Exception as exc:  # keep the other paths
            report[precision] = {"error": repr(exc)[:400]}
            traceback.print_exc()
        save(out)
        print(precision, json.dumps(report[precision]), flush=True)


def describe(r: CriticalLR, seconds: float) -> dict[str, Any]:
    return {
        "status": r.status,
        "eta": r.eta,
        "lower": r.lower,
        "upper": r.upper,
        "forwards_total": r.forwards,
        "seconds": round(seconds, 3),
        "seconds_per_forward": round(seconds / max(r.forwards, 1), 4),
    }


def section_shape(
    name: str,
    cfg: Olmo2Config,
    batch: int,
    seq: int,
    micro: int,
    device: str,
    precisions: list[Precision],
    direction_dtype: torch.dtype,
    out: Path,
) -> None:
    report: dict[str, Any] = {"batch": batch, "seq": seq}
    RESULTS[name] = report
    free()
    reset_peak()
    model = build(cfg, device, torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    tokens = batch * seq
    report["params"] = n_params
    gen = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=gen).to(device)
    flops = 2 * n_params * tokens  # forward, the 2*N*D convention of method.md §6
    attn = 4 * cfg.num_hidden_layers * batch * seq * seq * cfg.hidden_size
    with torch.no_grad():
        timed(lambda: lm_loss(model, ids))  # warm-up
        fwd_s, _ = timed(lambda: lm_loss(model, ids), repeat=5)
    report["forward_s"] = round(fwd_s, 4)
    report["forward_tflops_2ND"] = round(flops / fwd_s / 1e12, 1)
    report["forward_tflops_with_attention"] = round((flops + attn) / fwd_s / 1e12, 1)
    report["peak_gb_forward"] = round(peak_gb(), 2)
    save(out)
    print(name, json.dumps(report), flush=True)
    reset_peak()
    model.train()
    dir_s, direction = timed(lambda: fresh_adamw_direction(model, ids, micro, direction_dtype))
    model.eval()
    report["direction_s_fwd_bwd"] = round(dir_s, 3)
    report["direction_micro_batch"] = micro
    report["peak_gb_direction"] = round(peak_gb(), 2)
    save(out)
    print(name, "direction", dir_s, peak_gb(), flush=True)
    run_measurements(model, direction, ids, precisions, 1e-5, report, out)


def markov(vocab: int, seed: int, device: str) -> Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    logits = 3.0 * torch.randn(vocab, vocab, generator=gen)
    return torch.softmax(logits, dim=-1).to(device)  # (V, V)


def sample(P: Tensor, n: int, seq: int, gen: torch.Generator) -> Tensor:
    x = torch.empty(n, seq, dtype=torch.long, device=P.device)
    x[:, 0] = torch.randint(0, P.shape[0], (n,), device=P.device, generator=gen)
    for t in range(1, seq):
        x[:, t] = torch.multinomial(P[x[:, t - 1]], 1, generator=gen).squeeze(1)
    return x  # (n, seq)


def section_trained(
    cfg: Olmo2Config, device: str, seconds: float, batch: int, seq: int, out: Path
) -> None:
    report: dict[str, Any] = {"batch": batch, "seq": seq}
    RESULTS["trained"] = report
    free()
    model = build(cfg, device, torch.float32)  # fp32 master weights, bf16 autocast training
    report["params"] = sum(p.numel() for p in model.parameters())
    P_pt, P_ft = markov(cfg.vocab_size, 1, device), markov(cfg.vocab_size, 2, device)
    gen = torch.Generator(device=device).manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    model.train()
    t0, steps, loss = time.perf_counter(), 0, math.nan
    while time.perf_counter() - t0 < seconds:
        ids = sample(P_pt, batch, seq, gen)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
            out_loss = lm_loss(model, ids)
        out_loss.backward()
        opt.step()
        steps += 1
    loss = float(out_loss.detach())
    model.eval()
    report["train_steps"] = steps
    report["train_loss"] = loss
    del opt
    free()
    pt, ft = sample(P_pt, batch, seq, gen), sample(P_ft, batch, seq, gen)
    bf16 = build(cfg, device, torch.bfloat16)
    bf16.load_state_dict(model.state_dict())
    bf16.eval()
    for label, source in (("self", pt), ("relative_ft_to_pt", ft)):
        model.zero_grad(set_to_none=True)
        lm_loss(model, source).backward()
        params = list(model.parameters())
        d = adamw_direction(params, [p.grad for p in params], weight_decay=0.0)  # type: ignore[misc]
        model.zero_grad(set_to_none=True)
        entry: dict[str, Any] = {}
        report[label] = entry

        def autocast_loss(m: nn.Module, ids: Tensor) -> Tensor:
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
                return lm_loss(m, ids)

        paths: dict[str, tuple[nn.Module, Callable[[nn.Module, Tensor], Tensor], Precision]] = {
            "fp32_model_reference": (model, lm_loss, "exact"),
            "fp32_master_bf16_autocast": (model, autocast_loss, "exact"),
            "bf16_weights_fp32_compute": (bf16, lm_loss, "fp32"),
            "bf16_split": (bf16, lm_loss, "split"),
            "bf16_naive": (bf16, lm_loss, "exact"),
        }
        for path, (m, fn, prec) in paths.items():
            try:
                secs, r = timed(
                    lambda m=m, fn=fn, prec=prec, d=d: measure(
                        m, fn, d, pt, lr_guess=1e-4, precision=prec
                    )
                )
                lc = loss_change(m, fn, d, pt, 1e-5, precision=prec)
                entry[path] = describe(r, secs) | {"loss_change_at_1e-5": lc.delta}
            except Exception as exc:
                entry[path] = {"error": repr(exc)[:400]}
                traceback.print_exc()
            save(out)
        ref = entry["fp32_model_reference"]
        for e in entry.values():
            if "eta" in e and "eta" in ref and ref["eta"] > 0:
                e["eta_rel_diff_vs_fp32"] = round((e["eta"] - ref["eta"]) / ref["eta"], 4)
        save(out)
        print("trained", label, json.dumps(entry), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on CPU, to debug")
    parser.add_argument("--out", default="curvature_gpu.json")
    parser.add_argument("--budget", type=float, default=500.0, help="skip sections past this (s)")
    parser.add_argument("--sections", default="b1,b7,trained", help="in this order")
    args = parser.parse_args()
    out = Path(args.out)
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    RESULTS["machine"] = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    RESULTS["torch"] = torch.__version__
    RESULTS["tiny"] = args.tiny
    RESULTS["sections_skipped"] = []
    if device == "cuda":
        a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
        timed(lambda: a @ a)
        secs, _ = timed(lambda: a @ a, repeat=10)
        RESULTS["bf16_matmul_8192_tflops"] = round(2 * 8192**3 / secs / 1e12, 1)
        del a
    save(out)
    if args.tiny:
        b1 = olmo_config(64, 2, 4, 128, 512)
        b7 = olmo_config(128, 2, 4, 256, 512)
        small = olmo_config(64, 2, 4, 128, 64)
        sizes = {"b1": (2, 64, 1), "b7": (2, 64, 1), "trained": (8, 32, 5.0)}
    else:
        b1 = olmo_config(2048, 16, 16, 8192, 100352)
        b7 = olmo_config(4096, 32, 32, 11008, 100352)
        small = olmo_config(512, 8, 8, 2048, 256)
        sizes = {"b1": (8, 2048, 8), "b7": (4, 2048, 1), "trained": (32, 256, 45.0)}
    todo = args.sections.split(",")
    plan: list[tuple[str, Callable[[], None]]] = [
        (
            "b1",
            lambda: section_shape(
                "b1",
                b1,
                sizes["b1"][0],
                sizes["b1"][1],
                int(sizes["b1"][2]),
                device,
                ["exact", "split", "fp32"],
                torch.float32,
                out,
            ),
        ),
        (
            "trained",
            lambda: section_trained(
                small,
                device,
                sizes["trained"][2],
                int(sizes["trained"][0]),
                int(sizes["trained"][1]),
                out,
            ),
        ),
        (
            "b7",
            lambda: section_shape(
                "b7",
                b7,
                sizes["b7"][0],
                sizes["b7"][1],
                int(sizes["b7"][2]),
                device,
                ["split", "fp32"],
                torch.bfloat16,
                out,
            ),
        ),
    ]
    sections = dict(plan)
    for name in todo:
        fn = sections[name]
        if elapsed() > args.budget:
            RESULTS["sections_skipped"].append(name)
            continue
        try:
            fn()
            free()
        except Exception as exc:
            RESULTS.setdefault(name, {})["error"] = repr(exc)[:400]
            traceback.print_exc()
        RESULTS["elapsed_s"] = round(elapsed(), 1)
        save(out)
    print(json.dumps(RESULTS, indent=1), flush=True)


if __name__ == "__main__":
    main()
