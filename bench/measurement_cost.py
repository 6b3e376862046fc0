"""What one exact critical-sharpness measurement costs, in plain bf16 forwards on the same tokens.

Random-init Llama-3-shaped models (SDPA, bf16 weights) measured through `workers.curvature`:

- `trained`: a small Llama trained on the GPU first (fp32 master weights, bf16 autocast) on a
  generated Markov language; its bf16 copy is measured by every precision path against float32
  references: the float32 model itself, and the float32-compute path on the same bf16 weights.
  eta_c (own and relative direction) and the one-step loss change at a fine-tuning rate.
- `llama1b` (Llama-3.2-1B shape, 8 x 2048 tokens), `llama8b` (Llama-3.1-8B shape, 4 x 2048):
  a plain bf16 forward, then a small sweep of five neighbouring mix ratios of two distinct data
  sets (fresh-AdamW directions of the mixed gradient, bf16), each measured on a held-out batch by
  the compensated path with the slope from one backward on that batch (shared by the ratios) and
  `L(theta)` computed once (shared), warm-started from the previous ratio. Forwards and seconds
  per warm measurement, the round-one protocol (a guess 10% off) for comparison, and the float32
  reference on two ratios (eta_c and the loss change at the planned rate).
- `sweep8b`: the 8B shape at the default spec's batch size (64 k tokens) and learning rate, two
  domains and two evaluation sets: the set-up of one direction batch (2 backward passes for the
  domains, 2 for the slopes, 2 `L(theta)`), then `--sweep-ratios` neighbouring ratios of the
  default grid, each measurement followed by the one-step loss change at the planned rate. Peak
  memory, wall time against the same number of plain bf16 forwards, MFU, and the extrapolation to
  the whole default sweep (10 ratios, 2 evaluation sets, 4 batches).

- `attention`: one layer's causal attention call per shape (the forward's micro-batch, the same
  q, k, v): bf16 SDPA, float32 SDPA (what the compensated path ran before) and
  `compensated_attention` (the Triton kernel of workers/curvature/attention.py) with its default
  blocks and a few candidate block sizes (autotuning data), and its error against float32 SDPA.
  The `llama1b`/`llama8b` sections also time one probe of the compensated path with the
  attention hook on and off (`SHARPMIX_COMPENSATED_ATTENTION`) on the same direction.

Every section writes the JSON again when it ends; one failing section keeps the others.

    PYTHONUNBUFFERED=1 python3 bench/measurement_cost.py --out $OUT/measurement_cost.json
    .venv/bin/python bench/measurement_cost.py --tiny --out /tmp/measurement_cost.json  # CPU

`--combine RUN1.json RUN2.json --out results.json` files two device runs' JSONs under one result
with a summary per shape and the default sweep extrapolated from the
measured parts; `bench/results/measurement_cost_h200.json` was made that way (bench/README.md).
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import math
import os
import statistics
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import LlamaConfig, LlamaForCausalLM

from workers.curvature import (
    CriticalLR,
    LossChange,
    Precision,
    adamw_direction,
    attention,
    domain_gradients,
    line_slope,
    loss_change,
    measure,
)
from workers.curvature.compensated import (
    _ADDMM_INPLACE,
    _MM_OUT_DTYPE,
    _SPLIT_FAILED,
    addmm_f32_,
    mm_f32,
)

RESULTS: dict[str, Any] = {}
# `--text DIR --pretrain-seconds S`: the shape and sweep sections train their model on real text
# first (see `text_domains`, `pretrain`); unset, they measure the random-init model.
PRETRAIN: dict[str, Any] = {"text": None, "seconds": 0.0}
START = time.perf_counter()
H200_BF16_DENSE_TFLOPS = 989.4  # NVIDIA's H200 SXM figure, dense (no sparsity)
PLAN_LR = 3e-5  # examples/sweep.yaml's planned peak learning rate
TOL = 1 / 16


def elapsed() -> float:
    return time.perf_counter() - START


def save(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(RESULTS, indent=2, default=str) + "\n")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    """Median wall seconds of `repeat` synchronised calls, and the last result."""
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


def chunked_loss(micro: int) -> Callable[[nn.Module, Tensor], Tensor]:
    """Mean token loss of a (n, T) batch, evaluated `micro` sequences at a time (equal counts)."""

    def loss_fn(model: nn.Module, ids: Tensor) -> Tensor:
        chunks = ids.split(micro)
        total = torch.zeros((), dtype=torch.float32, device=ids.device)
        for chunk in chunks:
            out = model(input_ids=chunk, labels=chunk).loss
            total = total + out.float() * (len(chunk) / len(ids))
        return total

    return loss_fn


def llama(cfg: dict[str, Any]) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=cfg["hidden"],
        num_hidden_layers=cfg["layers"],
        num_attention_heads=cfg["heads"],
        num_key_value_heads=cfg["kv_heads"],
        intermediate_size=cfg["inter"],
        vocab_size=cfg["vocab"],
        tie_word_embeddings=cfg["tied"],
        max_position_embeddings=4096,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )


def build(cfg: LlamaConfig, device: str, dtype: torch.dtype) -> nn.Module:
    cfg._attn_implementation = "sdpa"
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(before)
    return model.eval()


def forward_flops(model: nn.Module, cfg: LlamaConfig, n: int, seq: int) -> float:
    """Model FLOPs of one plain forward: 2 per weight of every linear layer and token, plus
    causal attention (QK^T and PV, half the square)."""
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    attention = 2 * cfg.num_hidden_layers * seq * cfg.hidden_size * n * seq
    return float(2 * linear * n * seq + attention)


def markov(vocab: int, seed: int, device: str, support: int) -> Tensor:
    """A random transition matrix over the first `support` token ids (a distinct 'domain')."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    logits = torch.full((vocab, vocab), -math.inf)
    logits[:, :support] = 3.0 * torch.randn(vocab, support, generator=gen)
    return torch.softmax(logits, dim=-1).to(device)  # (V, V)


def sample(P: Tensor, n: int, seq: int, gen: torch.Generator, support: int) -> Tensor:
    x = torch.empty(n, seq, dtype=torch.long, device=P.device)
    x[:, 0] = torch.randint(0, support, (n,), device=P.device, generator=gen)
    for t in range(1, seq):
        x[:, t] = torch.multinomial(P[x[:, t - 1]], 1, generator=gen).squeeze(1)
    return x  # (n, seq)


def domains(vocab: int, n: int, seq: int, device: str) -> dict[str, Tensor]:
    """Two distinct data sets on a random-init model: uniform tokens ('pt') and a Markov chain
    on a fifth of the vocabulary ('ft'); a direction batch and a held-out batch of each."""
    gen = torch.Generator(device=device).manual_seed(0)
    support = max(vocab // 5, 8)
    small = min(vocab, 4096)  # a Markov chain over the full vocabulary would not fit memory
    P = markov(small, 7, device, min(support, small))
    out = {}
    for split in ("dir", "eval"):
        out[f"pt_{split}"] = torch.randint(0, vocab, (n, seq), device=device, generator=gen)
        out[f"ft_{split}"] = sample(P, n, seq, gen, min(support, small))
    return out


def text_stream(path: Path, length: int) -> Tensor:
    """The first `length` bytes of a jsonl.gz corpus's texts (documents separated by a zero
    byte) as token ids 0-255: real text at byte level, no tokenizer needed on the device.

    Only `--text` runs read corpora, and only they need the repository root importable
    (`PYTHONPATH=.`, as on the device); the other sections run from `bench/` alone."""
    from bench.science.debian_corpora import read_jsonl_gz

    out = b"".join(text.encode("utf-8") + b"\0" for text in read_jsonl_gz(path, None))
    if len(out) < length:
        raise ValueError(f"{path} holds {len(out)} bytes of text, {length} needed")
    return torch.frombuffer(bytearray(out[:length]), dtype=torch.uint8).long()


def text_domains(
    root: Path, n: int, seq: int, device: str, train_tokens: int
) -> tuple[dict[str, Tensor], Tensor]:
    """Two real-text domains (bench/science/debian_corpora.py): 'pt' the Debian manuals, 'ft'
    LaTeX documentation. A direction batch from each training file, held-out batches from the
    evaluation files, and before the direction batch `train_tokens` of 'pt' to pre-train on."""
    need = n * seq
    general = text_stream(root / "general_train.jsonl.gz", train_tokens + need)
    data = {
        "pt_dir": general[train_tokens:].view(n, seq),
        "ft_dir": text_stream(root / "latex_train.jsonl.gz", need).view(n, seq),
        "pt_eval": text_stream(root / "general_eval.jsonl.gz", need).view(n, seq),
        "ft_eval": text_stream(root / "latex_eval.jsonl.gz", need).view(n, seq),
    }
    return {k: v.to(device) for k, v in data.items()}, general[:train_tokens]


def pretrain(
    model: nn.Module, stream: Tensor, n: int, seq: int, micro: int, seconds: float
) -> dict[str, Any]:
    """Train the bf16 model in place for `seconds` on `stream` (cycled), n x seq tokens a step.

    Sign-of-momentum steps (Lion's update with one beta) of 3e-4: no float32 master weights or
    second moments, so an 8 B model trains on an 80 GB card; 3e-4 is a few bf16 ulps of a
    weight of 0.02, so the steps survive rounding (norm gains near 1 barely move).
    """
    params = list(model.parameters())
    momentum = [torch.zeros_like(p) for p in params]
    per_step = n * seq
    batches = max(len(stream) // per_step, 1)
    model.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        start = (len(losses) % batches) * per_step
        ids = stream[start : start + per_step].view(n, seq).to(params[0].device)
        total = 0.0
        for chunk in ids.split(micro):
            loss = model(input_ids=chunk, labels=chunk).loss * (len(chunk) / n)
            loss.backward()
            total += float(loss.detach())
        with torch.no_grad():
            for p, m in zip(params, momentum, strict=True):
                if p.grad is not None:
                    m.mul_(0.9).add_(p.grad, alpha=0.1)
                    p.add_(m.sign(), alpha=-3e-4)
                    p.grad = None
        losses.append(round(total, 4))
    model.eval()
    del momentum
    free()
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "steps": len(losses),
        "tokens_per_step": per_step,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "losses_every_10": losses[::10],
    }


def shape_data(
    cfg: LlamaConfig, model: nn.Module, n: int, seq: int, micro: int, device: str
) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """The section's two domains, and the model pre-trained on real text when `--text` says so
    (else the synthetic domains of a random-init model)."""
    if PRETRAIN["text"] is None:
        return domains(cfg.vocab_size, n, seq, device), None
    tokens = int(PRETRAIN.get("tokens", 4_000_000))
    data, stream = text_domains(Path(PRETRAIN["text"]), n, seq, device, tokens)
    # Steps of at most 8 sequences: the 64 k-token sweep batch would allow a handful of steps.
    steps_of = min(n, 8)
    return data, pretrain(model, stream, steps_of, seq, max(micro // 2, 1), PRETRAIN["seconds"])


def fresh_adamw(param: Tensor, grad: Tensor, dtype: torch.dtype) -> Tensor:
    return adamw_direction([param], [grad], weight_decay=0.0, dtype=dtype)[0]


def mixed_direction_bf16(
    params: Sequence[Tensor], grads: Sequence[Sequence[Tensor]], ratio: float, dtype: torch.dtype
) -> list[Tensor]:
    """Fresh-AdamW direction of `ratio * g_pt + (1 - ratio) * g_ft`, one tensor at a time."""
    out = []
    for i, p in enumerate(params):
        g = grads[0][i].float() * ratio + grads[1][i].float() * (1 - ratio)
        out.append(fresh_adamw(p, g, dtype))
    return out


def slopes_for_ratios(
    params: Sequence[Tensor],
    grads: Sequence[Sequence[Tensor]],
    eval_grads: Sequence[Tensor],
    ratios: Sequence[float],
) -> list[float]:
    """`-g_eval . d(r)` for every ratio, building each d(r) one parameter at a time."""
    totals = [0.0] * len(ratios)
    for i, p in enumerate(params):
        for j, r in enumerate(ratios):
            g = grads[0][i].float() * r + grads[1][i].float() * (1 - r)
            totals[j] += line_slope([eval_grads[i]], [fresh_adamw(p, g, torch.float32)])
    return totals


def describe(r: CriticalLR, seconds: float, plain_s: float) -> dict[str, Any]:
    return {
        "status": r.status,
        "eta": r.eta,
        "lower": r.lower,
        "upper": r.upper,
        "forwards": r.forwards,
        "seconds": round(seconds, 4),
        "plain_forwards": round(seconds / plain_s, 2),
        # Every point the search saw (the known loss change first), relative to L(theta).
        "probes": [[eta, loss - r.loss0] for eta, loss in r.probes],
    }


def rel(a: float, ref: float) -> float | None:
    return round((a - ref) / abs(ref), 5) if ref and math.isfinite(ref) else None


# -- trained ----------------------------------------------------------------------------------


def section_trained(device: str, tiny: bool, out: Path) -> None:
    report: dict[str, Any] = {}
    RESULTS["trained"] = report
    spec = (
        dict(hidden=64, layers=2, heads=4, kv_heads=2, inter=128, vocab=64, tied=False)
        if tiny
        else dict(hidden=512, layers=8, heads=8, kv_heads=4, inter=1536, vocab=256, tied=False)
    )
    n, seq, seconds = (16, 32, 20.0) if tiny else (32, 256, 40.0)
    cfg = llama(spec)
    model = build(cfg, device, torch.float32)
    report |= {
        "config": spec,
        "batch": n,
        "seq": seq,
        "params": sum(p.numel() for p in model.parameters()),
    }
    vocab = cfg.vocab_size
    P_pt, P_ft = markov(vocab, 1, device, vocab), markov(vocab, 2, device, vocab)
    gen = torch.Generator(device=device).manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    model.train()
    t0, steps = time.perf_counter(), 0
    loss = torch.zeros(())
    while time.perf_counter() - t0 < seconds:
        ids = sample(P_pt, n, seq, gen, vocab)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        steps += 1
    model.eval()
    report["train_steps"], report["train_loss"] = steps, float(loss.detach())
    del opt
    lm = chunked_loss(n)
    pt, ft = sample(P_pt, n, seq, gen, vocab), sample(P_ft, n, seq, gen, vocab)
    bf16 = build(cfg, device, torch.bfloat16)
    bf16.load_state_dict(model.state_dict())
    bf16.eval()
    for label, source in (("own", pt), ("relative_ft_to_pt", ft)):
        params = list(model.parameters())
        model.zero_grad(set_to_none=True)
        lm(model, source).backward()
        d = adamw_direction(params, [p.grad for p in params], weight_decay=0.0)  # type: ignore[misc]
        # The slope of the evaluation loss along d, from one backward of the bf16 model (eval).
        bf16_params = list(bf16.parameters())
        g_eval = domain_gradients(bf16, lm, [[pt]], params=bf16_params, dtype=torch.float32)
        slope = line_slope(g_eval.grads[0], d)
        model.zero_grad(set_to_none=True)
        entry: dict[str, Any] = {"slope_bf16_backward": slope}
        report[label] = entry
        # Same guess and slope for every path: where two paths agree on every probe's side
        # they return the same bracket, so the differences below are precision, not placement.
        paths: dict[str, tuple[nn.Module, Precision, float | None]] = {
            "fp32_model": (model, "exact", slope),
            "bf16_fp32_compute": (bf16, "fp32", slope),
            "bf16_compensated": (bf16, "compensated", slope),
            "bf16_split": (bf16, "split", slope),
            "bf16_fp32_compute_no_slope": (bf16, "fp32", None),
            "bf16_compensated_no_slope": (bf16, "compensated", None),
        }
        before = [p.detach().clone() for p in bf16.parameters()]
        for path, (m, prec, s) in paths.items():
            try:
                secs, r = timed(
                    lambda m=m, prec=prec, s=s, d=d: measure(
                        m, lm, d, pt, lr_guess=1e-4, precision=prec, slope=s
                    )
                )
                changes = {
                    f"loss_change_at_{lr:g}": loss_change(
                        m, lm, d, pt, lr, loss0=r.loss0, precision=prec
                    ).delta
                    for lr in (1e-5, PLAN_LR)
                }
                entry[path] = describe(r, secs, 1.0) | changes
                del entry[path]["plain_forwards"]
            except Exception as exc:
                entry[path] = {"error": repr(exc)[:400]}
                traceback.print_exc()
        entry["bf16_restored_bit_exactly"] = all(
            torch.equal(a, b) for a, b in zip(before, bf16.parameters(), strict=True)
        )
        for ref_name in ("fp32_model", "bf16_fp32_compute"):
            for path, e in entry.items():
                ref = entry.get(ref_name + ("_no_slope" if path.endswith("_no_slope") else ""), {})
                if not isinstance(e, dict) or "eta" not in e or "eta" not in ref:
                    continue
                e[f"eta_rel_diff_vs_{ref_name}"] = rel(e["eta"], ref["eta"])
                for key in ("loss_change_at_1e-05", f"loss_change_at_{PLAN_LR:g}"):
                    e[f"{key}_rel_diff_vs_{ref_name}"] = rel(e[key], ref[key])
        save(out)
        print("trained", label, json.dumps(entry), flush=True)


# -- shapes -----------------------------------------------------------------------------------


SHAPES = {
    "llama1b": dict(
        hidden=2048, layers=16, heads=32, kv_heads=8, inter=8192, vocab=128256, tied=True
    ),
    "llama8b": dict(
        hidden=4096, layers=32, heads=32, kv_heads=8, inter=14336, vocab=128256, tied=False
    ),
}
TINY = dict(hidden=64, layers=2, heads=4, kv_heads=2, inter=128, vocab=512, tied=True)


def section_shape(
    name: str, spec: dict[str, Any], n: int, seq: int, micro: int, device: str, out: Path
) -> None:
    report: dict[str, Any] = {"config": spec, "batch": n, "seq": seq}
    RESULTS[name] = report
    free()
    reset_peak()
    cfg = llama(spec)
    model = build(cfg, device, torch.bfloat16)
    params = list(model.parameters())
    report["params"] = sum(p.numel() for p in params)
    data, report["pretrain"] = shape_data(cfg, model, n, seq, micro, device)
    save(out)
    lm = chunked_loss(micro)
    flops = forward_flops(model, cfg, n, seq)
    with torch.no_grad():
        timed(lambda: lm(model, data["pt_eval"]))
        plain_s, _ = timed(lambda: lm(model, data["pt_eval"]), repeat=3)
    report["plain_forward_s"] = round(plain_s, 4)
    report["plain_forward_mfu"] = round(flops / plain_s / 1e12 / H200_BF16_DENSE_TFLOPS, 3)
    save(out)
    print(name, json.dumps(report), flush=True)

    # Set-up shared by every ratio: one backward per domain, one per evaluation batch (slopes).
    dir_micro = [data["pt_dir"].split(1), data["ft_dir"].split(1)]
    setup_s, grads = timed(
        lambda: domain_gradients(model, lm, dir_micro, params=params, dtype=torch.bfloat16)
    )
    ratios = [0.3, 0.4, 0.5, 0.6, 0.7]
    eval_micro = [data["pt_eval"].split(1)]
    slope_s, g_eval = timed(
        lambda: domain_gradients(model, lm, eval_micro, params=params, dtype=torch.bfloat16)
    )
    slopes = slopes_for_ratios(params, grads.grads, g_eval.grads[0], ratios)
    del g_eval
    free()
    report["setup"] = {
        "domain_backward_s": round(setup_s, 3),
        "eval_backward_for_slopes_s": round(slope_s, 3),
        "eval_backward_plain_forwards": round(slope_s / plain_s, 2),
        "slopes": slopes,
    }
    reset_peak()
    loss0_s, loss0 = timed(lambda: measure_loss0(model, lm, params, data["pt_eval"], "compensated"))
    report["loss0_compensated_s"] = round(loss0_s, 4)
    save(out)

    runs: list[dict[str, Any]] = []
    report["ratios"] = runs
    refs: list[dict[str, Any]] = []
    report["fp32_reference"] = refs
    # Warm starts as the product's sweep makes them (workers/sweep.py): the last ratio's eta_c.
    # `curvature_carry_guess` records what the other rule (eta_c * slope / last slope) would
    # have tried.
    guess, last_slope = 1e-5, None
    peak = 0.0
    for ratio, slope in zip(ratios, slopes, strict=True):
        d = mixed_direction_bf16(params, grads.grads, ratio, torch.bfloat16)
        carry = guess * slope / last_slope if last_slope and slope / last_slope > 0 else None
        reset_peak()
        # The loss change at the planned rate first: the sweep measures it anyway, and its
        # forward is the search's first, known probe (workers/curvature/distributed.py).
        lc_s, lc = timed(
            lambda d=d: loss_change(
                model,
                lm,
                d,
                data["pt_eval"],
                PLAN_LR,
                loss0=loss0,
                params=params,
                precision="compensated",
            )
        )
        known = [(PLAN_LR, lc.loss)]
        secs, r = timed(
            lambda d=d, g=guess, s=slope, k=known: measure(
                model,
                lm,
                d,
                data["pt_eval"],
                lr_guess=g,
                loss0=loss0,
                params=params,
                precision="compensated",
                slope=s,
                known=k,
            )
        )
        peak = max(peak, peak_gb())
        run = {"ratio": ratio, "lr_guess": guess, "curvature_carry_guess": carry, "slope": slope}
        run |= describe(r, secs, plain_s)
        run |= {"loss_change_at_plan": lc.delta, "loss_change_s": round(lc_s, 4)}
        runs.append(run)
        print(name, json.dumps(run), flush=True)
        if ratio == 0.5:
            report["attention_hook"] = probe_with_and_without_hook(
                model, lm, params, d, data["pt_eval"], plain_s
            )
        if ratio == 0.5 and r.status == "ok":
            # Round one's protocol: a warm guess 10% above eta_c, with and without the slope.
            for key, s in (("warm_10pct_off", slope), ("warm_10pct_off_no_slope", None)):
                secs10, r10 = timed(
                    lambda d=d, s=s, e=r.eta, k=known: measure(
                        model,
                        lm,
                        d,
                        data["pt_eval"],
                        lr_guess=e * 1.1,
                        loss0=loss0,
                        params=params,
                        precision="compensated",
                        slope=s,
                        known=k,
                    )
                )
                report[key] = describe(r10, secs10, plain_s)
        if ratio in (0.4, 0.6) and r.status == "ok":
            try:
                refs.append(fp32_reference(model, lm, params, d, data["pt_eval"], run, loss0))
            except torch.cuda.OutOfMemoryError as exc:  # 8 B in float32 on an 80 GB card
                refs.append({"ratio": ratio, "error": repr(exc)[:200]})
                free()
        if r.status == "ok":
            guess, last_slope = r.eta, slope
        del d
        save(out)
    report["peak_gb"] = round(peak, 2)
    warm = runs[1:]
    per_forward = [w["seconds"] / w["forwards"] for w in warm]
    report["forwards_per_warm_measurement"] = statistics.median(w["forwards"] for w in warm)
    report["forwards_per_warm_measurement_all"] = [w["forwards"] for w in warm]
    report["plain_forwards_per_warm_measurement"] = round(
        statistics.median(w["plain_forwards"] for w in warm), 2
    )
    report["plain_forwards_per_warm_measurement_with_loss_change"] = round(
        statistics.median((w["seconds"] + w["loss_change_s"]) / plain_s for w in warm), 2
    )
    report["measurement_forward_per_plain"] = round(statistics.median(per_forward) / plain_s, 2)
    report["measurement_forward_mfu"] = round(
        flops / statistics.median(per_forward) / 1e12 / H200_BF16_DENSE_TFLOPS, 3
    )
    report["amortised_in_sweep_plain_forwards"] = {
        "what": "per warm measurement when L(theta) and the slope backward are shared by "
        f"{len(ratios)} ratios",
        "value": round(
            report["plain_forwards_per_warm_measurement"]
            + (loss0_s + slope_s) / plain_s / len(ratios),
            2,
        ),
    }
    ok = [x for x in refs if "eta_rel_diff" in x]
    if ok:
        report["eta_rel_diff_vs_fp32"] = max((x["eta_rel_diff"] for x in ok), key=abs)
        report["loss_change_rel_diff_vs_fp32"] = max(
            (x["loss_change_rel_diff"] for x in ok), key=abs
        )
    report["peak_gb_with_fp32_reference"] = round(peak_gb(), 2)
    save(out)
    print(name, json.dumps({k: v for k, v in report.items() if k != "ratios"}), flush=True)


def fp32_reference(
    model: nn.Module,
    lm: Callable[[nn.Module, Tensor], Tensor],
    params: list[Tensor],
    d: list[Tensor],
    batch: Tensor,
    run: dict[str, Any],
    loss0: float,
) -> dict[str, Any]:
    """The float32-compute path on the same direction, guess and slope as a compensated run:
    the same probes wherever the two agree on a probe's side."""
    try:
        reset_peak()
        ref_l0 = measure_loss0(model, lm, params, batch, "fp32")
        ref_s, ref = timed(
            lambda: measure(
                model,
                lm,
                d,
                batch,
                lr_guess=run["lr_guess"],
                loss0=ref_l0,
                params=params,
                precision="fp32",
                slope=run["slope"],
            )
        )
        ref_lc = loss_change(
            model, lm, d, batch, PLAN_LR, loss0=ref_l0, params=params, precision="fp32"
        )
        return {
            "ratio": run["ratio"],
            "fp32_eta": ref.eta,
            "fp32_status": ref.status,
            "fp32_forwards": ref.forwards,
            "fp32_seconds_per_forward": round(ref_s / ref.forwards, 4),
            "fp32_loss_change_at_plan": ref_lc.delta,
            "fp32_peak_gb": round(peak_gb(), 2),
            "eta_rel_diff": rel(run["eta"], ref.eta),
            "loss_change_rel_diff": rel(run["loss_change_at_plan"], ref_lc.delta),
            "loss0_rel_diff": rel(loss0, ref_l0),
        }
    except Exception as exc:
        traceback.print_exc()
        return {"ratio": run["ratio"], "error": repr(exc)[:400]}


def measure_loss0(
    model: nn.Module,
    lm: Callable[[nn.Module, Tensor], Tensor],
    params: list[Tensor],
    batch: Tensor,
    precision: Precision,
) -> float:
    """L(theta) through a precision path (a zero-step loss change)."""
    zeros = [torch.zeros((), dtype=p.dtype, device=p.device).expand_as(p) for p in params]
    return loss_change(model, lm, zeros, batch, 0.0, params=params, precision=precision).loss0


# -- the 8B sweep at the default spec ---------------------------------------------------------


def section_sweep(
    spec: dict[str, Any],
    n: int,
    seq: int,
    micro: int,
    n_ratios: int,
    first_guess: float,
    device: str,
    out: Path,
) -> None:
    report: dict[str, Any] = {"config": spec, "batch": n, "seq": seq, "tokens": n * seq}
    report["first_guess"] = first_guess
    RESULTS["sweep8b"] = report
    free()
    reset_peak()
    cfg = llama(spec)
    model = build(cfg, device, torch.bfloat16)
    params = list(model.parameters())
    data, report["pretrain"] = shape_data(cfg, model, n, seq, micro, device)
    save(out)
    lm = chunked_loss(micro)
    flops = forward_flops(model, cfg, n, seq)
    with torch.no_grad():
        timed(lambda: lm(model, data["pt_eval"][:micro]))
        plain_s, _ = timed(lambda: lm(model, data["pt_eval"]), repeat=2)
    report["plain_forward_s"] = round(plain_s, 3)
    save(out)
    t_setup = time.perf_counter()
    grads = domain_gradients(
        model,
        lm,
        [data["pt_dir"].split(1), data["ft_dir"].split(1)],
        params=params,
        dtype=torch.bfloat16,
    )
    grid = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0]  # examples/sweep.yaml
    ratios = grid[3 : 3 + n_ratios]
    sets = {"pt": data["pt_eval"], "ft": data["ft_eval"]}
    slopes: dict[str, list[float]] = {}
    for name, batch in sets.items():
        g = domain_gradients(model, lm, [batch.split(1)], params=params, dtype=torch.bfloat16)
        slopes[name] = slopes_for_ratios(params, grads.grads, g.grads[0], ratios)
        del g
        free()
    loss0 = {name: measure_loss0(model, lm, params, b, "compensated") for name, b in sets.items()}
    sync()
    setup_s = time.perf_counter() - t_setup
    report["setup_one_batch_s"] = round(setup_s, 2)
    report["setup_peak_gb"] = round(peak_gb(), 2)
    save(out)
    print("sweep8b setup", setup_s, peak_gb(), flush=True)
    runs: list[dict[str, Any]] = []
    report["measurements"] = runs
    # The first measurement of each set starts at the order of magnitude of eta_c that the
    # llama8b section measured on this random-init shape (1.3e-2), not at the plan rate 400x
    # below it: a cold start, but not a pathological one. Every later one is warm.
    guess = dict.fromkeys(sets, first_guess)
    warm_sets: set[str] = set()
    t_measure = time.perf_counter()
    forwards = 0
    for j, ratio in enumerate(ratios):
        d = mixed_direction_bf16(params, grads.grads, ratio, torch.bfloat16)
        for name, batch in sets.items():
            s = slopes[name][j]
            # As the product's sweep: the loss change first, its forward the search's first
            # (known) probe; warm-started from the last ratio's eta_c on this set.
            lc_s, lc = timed(
                lambda d=d, batch=batch, name=name: loss_change(
                    model,
                    lm,
                    d,
                    batch,
                    PLAN_LR,
                    loss0=loss0[name],
                    params=params,
                    precision="compensated",
                )
            )
            secs, r = timed(
                lambda d=d, batch=batch, name=name, s=s, k=[(PLAN_LR, lc.loss)]: measure(
                    model,
                    lm,
                    d,
                    batch,
                    lr_guess=guess[name],
                    tol=TOL,
                    loss0=loss0[name],
                    params=params,
                    precision="compensated",
                    slope=s,
                    known=k,
                )
            )
            forwards += r.forwards + lc.forwards
            run = {"ratio": ratio, "eval_set": name, "warm": name in warm_sets}
            run |= describe(r, secs, plain_s) | {
                "loss_change_at_plan": lc.delta,
                "loss_change_s": round(lc_s, 3),
            }
            runs.append(run)
            print("sweep8b", json.dumps(run), flush=True)
            if r.status == "ok":
                guess[name] = r.eta
                warm_sets.add(name)
            save(out)
        del d
        free()
    sync()
    measure_s = time.perf_counter() - t_measure
    report["peak_gb"] = round(peak_gb(), 2)
    total = torch.cuda.get_device_properties(0).total_memory if device == "cuda" else 0
    report["device_total_gb"] = round(total / 2**30, 2)  # GiB, as peak_gb
    report["measure_wall_s"] = round(measure_s, 2)
    report["measure_forwards"] = forwards
    report["floor_same_plain_forwards_s"] = round(forwards * plain_s, 2)
    report["measure_wall_over_floor"] = round(measure_s / (forwards * plain_s), 2)
    report["measurement_forward_mfu"] = round(
        flops * forwards / measure_s / 1e12 / H200_BF16_DENSE_TFLOPS, 3
    )
    report["plain_forward_mfu"] = round(flops / plain_s / 1e12 / H200_BF16_DENSE_TFLOPS, 3)
    # Extrapolation to the default sweep: 10 ratios x 2 sets x 4 batches; the first measurement
    # of each set is cold, all later ones warm (warm starts carry across ratios and batches).
    warm = [x for x in runs if x["warm"]]
    cold = [x for x in runs if not x["warm"]]
    if warm and cold:
        per_warm = statistics.median(x["seconds"] + x["loss_change_s"] for x in warm)
        per_cold = statistics.median(x["seconds"] + x["loss_change_s"] for x in cold)
        f_warm = statistics.median(x["forwards"] + 1 for x in warm)
        f_cold = statistics.median(x["forwards"] + 1 for x in cold)
        total = 4 * setup_s + 2 * per_cold + 78 * per_warm
        total_forwards = 2 * f_cold + 78 * f_warm
        report["extrapolated_default_sweep"] = {
            "what": "measured on 1 of 4 batches and the ratios listed; 4 x the set-up, "
            "2 cold and 78 warm (measurement + loss change at the plan rate) at the medians seen",
            "wall_s": round(total, 1),
            "measurement_forwards": total_forwards,
            "floor_same_plain_forwards_s": round(total_forwards * plain_s, 1),
            "wall_over_floor_measurements_only": round(
                (2 * per_cold + 78 * per_warm) / (total_forwards * plain_s), 2
            ),
            "setup_share": round(4 * setup_s / total, 3),
        }
    report["forwards_per_warm_measurement"] = (
        statistics.median(x["forwards"] for x in warm) if warm else None
    )
    save(out)


def probe_with_and_without_hook(
    model: nn.Module,
    lm: Callable[[nn.Module, Tensor], Tensor],
    params: Sequence[Tensor],
    d: list[Tensor],
    batch: Tensor,
    plain_s: float,
) -> dict[str, Any]:
    """One compensated probe (the loss change at the plan rate, `L(theta)` given) with the
    attention kernel and with float32 SDPA, on the same direction and batch; and with the
    kernel but the bf16 split in PyTorch operations instead of the fused Triton split."""
    before = os.environ.get(attention.MODE_VARIABLE)
    out: dict[str, Any] = {}
    try:
        on = "1" if batch.is_cuda else "interpret"  # on CPU: Triton's interpreter, if imported so
        device = str(batch.device)
        for label, mode in (("kernel", on), ("float32_sdpa", "0"), ("pytorch_split", on)):
            os.environ[attention.MODE_VARIABLE] = mode
            if label == "pytorch_split":
                _SPLIT_FAILED.setdefault(device, "turned off by bench/measurement_cost.py")
            loss0 = measure_loss0(model, lm, list(params), batch, "compensated")

            def probe(loss0: float = loss0) -> LossChange:
                return loss_change(
                    model,
                    lm,
                    d,
                    batch,
                    PLAN_LR,
                    loss0=loss0,
                    params=params,
                    precision="compensated",
                )

            probe()
            secs, lc = timed(probe, repeat=2)
            out[label] = {
                "probe_s": round(secs, 4),
                "probe_plain_forwards": round(secs / plain_s, 2),
                "loss0": loss0,
                "loss_change_at_plan": lc.delta,
            }
    except Exception as exc:
        traceback.print_exc()
        out["error"] = repr(exc)[:400]
    finally:
        if _SPLIT_FAILED.get(str(batch.device), "").endswith("measurement_cost.py"):
            del _SPLIT_FAILED[str(batch.device)]
        if before is None:
            os.environ.pop(attention.MODE_VARIABLE, None)
        else:
            os.environ[attention.MODE_VARIABLE] = before
    if "kernel" in out and "float32_sdpa" in out:
        on, off = out["kernel"], out["float32_sdpa"]
        out["probe_s_kernel_over_sdpa"] = round(on["probe_s"] / off["probe_s"], 3)
        out["loss0_rel_diff"] = rel(on["loss0"], off["loss0"])
        out["loss_change_rel_diff"] = rel(on["loss_change_at_plan"], off["loss_change_at_plan"])
    if "kernel" in out and "pytorch_split" in out:
        fused, plain = out["kernel"], out["pytorch_split"]
        out["probe_s_fused_split_over_pytorch_split"] = round(
            fused["probe_s"] / plain["probe_s"], 3
        )
        out["split_loss_change_identical"] = (
            fused["loss_change_at_plan"] == plain["loss_change_at_plan"]
        )
    out["kernel_ran"] = attention.kernel_runs_on(batch.device)
    out["fused_split_ran"] = batch.is_cuda and str(batch.device) not in _SPLIT_FAILED
    return out


# Block sizes timed beside the default (BLOCK_M, BLOCK_N, num_warps, num_stages): what an
# autotuning pass would start from; the best becomes `_launch_config`'s default.
ATTENTION_CANDIDATES = [
    (128, 64, 8, 2),
    (128, 32, 8, 2),
    (128, 64, 8, 3),
    (64, 64, 4, 2),
    (64, 32, 4, 3),
]


def attention_costs(spec: dict[str, Any], n: int, seq: int, device: str) -> dict[str, Any]:
    """Seconds of one causal attention call of a layer of `spec` on `n` x `seq` tokens (the
    forward's micro-batch), all on the same q, k, v: bf16 SDPA, float32 SDPA and the
    compensated kernel (TF32 off, as during a measurement), with their errors against float32
    SDPA (itself ~2**-23 off)."""
    heads, kv_heads = spec["heads"], spec["kv_heads"]
    D = spec["hidden"] // heads
    gen = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(n, heads, seq, D, device=device, generator=gen)  # (B, H, T, D)
    k = torch.randn(n, kv_heads, seq, D, device=device, generator=gen)  # (B, Hkv, T, D)
    v = torch.randn(n, kv_heads, seq, D, device=device, generator=gen)
    bf16 = [t.bfloat16() for t in (q, k, v)]
    out: dict[str, Any] = {
        "q": [n, heads, seq, D],
        "kv": [n, kv_heads, seq, D],
        "kernel_ran": attention.kernel_runs_on(q.device),
        "default_config": attention._launch_config(D),
    }
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:

        def sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return torch.nn.functional.scaled_dot_product_attention(
                q, k, v, is_causal=True, enable_gqa=True
            )

        ref = sdpa(q, k, v).double()
        calls: dict[str, Callable[[], Tensor]] = {
            "sdpa_bf16": lambda: sdpa(*bf16),
            "sdpa_fp32": lambda: sdpa(q, k, v),
            "compensated": lambda: attention.compensated_attention(q, k, v),
        }
        for name, fn in calls.items():
            timed(fn)
            secs, result = timed(fn, repeat=5)
            out[f"{name}_s"] = round(secs, 6)
            err = (result.double() - ref).abs().max() / ref.abs().max()
            out[f"{name}_max_err_vs_fp32"] = float(err)
        out["compensated_over_sdpa_bf16"] = round(out["compensated_s"] / out["sdpa_bf16_s"], 2)
        out["compensated_over_sdpa_fp32"] = round(out["compensated_s"] / out["sdpa_fp32_s"], 3)
        if out["kernel_ran"]:
            tried: list[dict[str, Any]] = []
            out["candidates"] = tried
            for bm, bn, warps, stages in ATTENTION_CANDIDATES:
                cfg = {"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": warps, "num_stages": stages}

                def kernel(cfg: dict[str, int] = cfg) -> Tensor:
                    return attention._triton_attention(
                        q, k, v, causal=True, scale=D**-0.5, mask=None, config=cfg
                    )

                try:
                    timed(kernel)
                    secs, result = timed(kernel, repeat=5)
                    err = float((result.double() - ref).abs().max() / ref.abs().max())
                    tried.append(cfg | {"s": round(secs, 6), "max_err_vs_fp32": err})
                except Exception as exc:
                    tried.append(cfg | {"error": repr(exc)[:300]})
    finally:
        torch.set_float32_matmul_precision(precision)
    return out


def section_attention(shapes: dict[str, tuple[Any, ...]], device: str, out: Path) -> None:
    report: dict[str, Any] = {}
    RESULTS["attention"] = report
    for name, (spec, _n, seq, micro) in shapes.items():
        try:
            report[name] = attention_costs(spec, micro, seq, device)
        except Exception as exc:
            traceback.print_exc()
            report[name] = {"error": repr(exc)[:400]}
        save(out)
        print("attention", name, json.dumps(report[name]), flush=True)
        free()


def sdpa_costs() -> dict[str, float]:
    """Seconds of one causal attention of the 8B shape's layer (4 x 2048 tokens, 32 query and
    8 key/value heads of 128) in bf16 and in float32 (what the exact paths run)."""
    out = {}
    for label, dtype, fn in (
        ("bfloat16", torch.bfloat16, torch.nn.functional.scaled_dot_product_attention),
        ("float32", torch.float32, torch.nn.functional.scaled_dot_product_attention),
    ):
        q = torch.randn(4, 32, 2048, 128, device="cuda", dtype=dtype)
        kv = torch.randn(4, 8, 2048, 128, device="cuda", dtype=dtype)
        call = lambda q=q, kv=kv, fn=fn: fn(q, kv, kv, is_causal=True, enable_gqa=True)  # noqa: E731
        timed(call)
        out[label] = round(timed(call, repeat=3)[0], 5)
    return out


def triton_version() -> str | None:
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return None


def llama_flops(spec: dict[str, Any], n: int, seq: int) -> float:
    """`forward_flops` from a config alone (for runs that are only files now)."""
    h, i, layers, v = spec["hidden"], spec["inter"], spec["layers"], spec["vocab"]
    kv = h // spec["heads"] * spec["kv_heads"]
    linear = layers * (2 * h * h + 2 * h * kv + 3 * h * i) + v * h
    return float(2 * linear * n * seq + 2 * layers * seq * h * n * seq)


def shape_summary(report: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "plain_forward_s",
        "forwards_per_warm_measurement",
        "plain_forwards_per_warm_measurement",
        "eta_rel_diff_vs_fp32",
        "loss_change_rel_diff_vs_fp32",
        "peak_gb",
        "measurement_forward_per_plain",
        "measurement_forward_mfu",
        "plain_forward_mfu",
    )
    out = {k: report.get(k) for k in keys}
    refs = [r for r in report.get("fp32_reference", []) if "fp32_seconds_per_forward" in r]
    if refs:
        per = statistics.median(r["fp32_seconds_per_forward"] for r in refs)
        out["fp32_path_forward_per_plain"] = round(per / report["plain_forward_s"], 2)
        out["fp32_path_peak_gb"] = max(r["fp32_peak_gb"] for r in refs)
    out["warm_10pct_off_forwards"] = report.get("warm_10pct_off", {}).get("forwards")
    out["warm_10pct_off_no_slope_forwards"] = report.get("warm_10pct_off_no_slope", {}).get(
        "forwards"
    )
    return out


def sweep_summary(sweep: dict[str, Any], warm_probes: float) -> dict[str, Any]:
    """The default sweep (10 ratios x 2 sets x 4 batches) from what the sweep section measured:
    the set-up of one batch, its cold measurements and their per-forward seconds; the warm
    measurements' probe count `warm_probes` comes from the 8k-token section of the same shape
    where the sweep section stopped before its warm measurements."""
    runs = sweep.get("measurements", [])
    cold = [x for x in runs if not x["warm"]]
    warm = [x for x in runs if x["warm"]]
    per_forward = statistics.median(
        [x["seconds"] / x["forwards"] for x in runs] + [x["loss_change_s"] for x in runs]
    )
    f_warm = statistics.median(x["forwards"] for x in warm) if warm else warm_probes
    cold_s = sum(x["seconds"] + x["loss_change_s"] for x in cold)
    cold_forwards = sum(x["forwards"] + 1 for x in cold)
    n_warm = 80 - len(cold)
    warm_s = n_warm * (f_warm + 1) * per_forward
    forwards = cold_forwards + n_warm * (f_warm + 1)
    plain = sweep["plain_forward_s"]
    setup = 4 * sweep["setup_one_batch_s"]
    flops = llama_flops(sweep["config"], sweep["batch"], sweep["seq"])
    return {
        "measured": f"{len(runs)} measurements ({len(cold)} cold, {len(warm)} warm) of 1 batch "
        "of 64k tokens, then cut off by the run's time limit",
        "warm_probes_used": f_warm,
        "warm_probes_source": "measured here" if warm else "llama8b section (8k tokens)",
        "seconds_per_measurement_forward": round(per_forward, 3),
        "measurement_forward_per_plain": round(per_forward / plain, 2),
        "measurement_forward_mfu": round(flops / per_forward / 1e12 / H200_BF16_DENSE_TFLOPS, 3),
        "plain_forward_mfu": round(flops / plain / 1e12 / H200_BF16_DENSE_TFLOPS, 3),
        "setup_peak_gib": sweep.get("setup_peak_gb"),
        "extrapolated_default_sweep": {
            "what": "4 x the measured set-up of one batch (2 domain and 2 slope backward "
            "passes, 2 L(theta)), the 2 measured cold measurements, and 78 warm ones of "
            f"{f_warm} probes + 1 loss change at the plan rate, at the measured seconds per "
            "forward",
            "wall_s": round(setup + cold_s + warm_s, 1),
            "setup_s": round(setup, 1),
            "measurement_s": round(cold_s + warm_s, 1),
            "measurement_forwards": forwards,
            "floor_same_plain_forwards_s": round(forwards * plain, 1),
            "measurement_wall_over_floor": round((cold_s + warm_s) / (forwards * plain), 2),
            "wall_over_floor": round((setup + cold_s + warm_s) / (forwards * plain), 2),
        },
    }


def combine(run1: Path, run2: Path, out: Path) -> None:
    first, second = json.loads(run1.read_text()), json.loads(run2.read_text())
    trained = first["trained"]
    accuracy = {}
    for label in ("own", "relative_ft_to_pt"):
        e = trained[label]["bf16_compensated"]
        accuracy[label] = {k: v for k, v in e.items() if "rel_diff" in k}
    summary = {
        "code": "run1: the committed compensated path (float32 SDPA); run2: the same linear "
        "layers with an attention built from bf16 products that replaced SDPA, since removed "
        "(it was no faster: sdpa_fp32_vs_bf16 in run2)",
        "llama1b": shape_summary(first["llama1b"]) | {"run": "run1"},
        "llama8b": shape_summary(first["llama8b"]) | {"run": "run1"},
        "llama8b_repeat": shape_summary(second["llama8b"]) | {"run": "run2"},
        "trained_compensated_rel_diffs": accuracy,
        "trained_restored_bit_exactly": all(
            trained[label]["bf16_restored_bit_exactly"] for label in accuracy
        ),
        "sweep8b": sweep_summary(
            second["sweep8b"], float(second["llama8b"]["forwards_per_warm_measurement"])
        )
        | {"run": "run2"},
    }
    out.write_text(json.dumps({"summary": summary, "run1": first, "run2": second}, indent=2) + "\n")
    print(json.dumps(summary, indent=1))


def _warm_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The warm-measurement figures from a shape's ``ratios`` alone (a section that stopped
    before writing its own medians, e.g. when the float32 reference ran out of memory)."""
    warm = [r for r in report.get("ratios", [])[1:] if r.get("status") == "ok"]
    if not warm:
        return {}
    return {
        "forwards_per_warm_measurement": statistics.median(r["forwards"] for r in warm),
        "forwards_per_warm_measurement_all": [r["forwards"] for r in warm],
        "plain_forwards_per_warm_measurement": round(
            statistics.median(r["plain_forwards"] for r in warm), 2
        ),
    }


def summarize(raws: list[Path], out: Path) -> None:
    """One summary per shape over device runs of the current code (attention kernel on):
    what the issue asks per shape, the attention call against SDPA, and one probe with the
    kernel against float32 SDPA on the same direction."""
    summary: dict[str, Any] = {}
    runs = {raw.stem: json.loads(raw.read_text()) for raw in raws}
    calls = {
        name: call
        for report in runs.values()
        for name, call in report.get("attention", {}).items()
        if isinstance(call, dict)
    }
    for stem, report in runs.items():
        for name in ("llama1b", "llama8b"):
            shape = report.get(name)
            if not shape or "plain_forward_s" not in shape:
                continue
            entry = _warm_summary(shape) | {
                k: v for k, v in shape_summary(shape).items() if v is not None
            }
            if "error" in shape:
                entry["stopped"] = shape["error"][:160]
            entry["attention_hook"] = shape.get("attention_hook")
            failed = [r["error"][:120] for r in shape.get("fp32_reference", []) if "error" in r]
            if failed and "eta_rel_diff_vs_fp32" not in entry:
                entry["eta_rel_diff_vs_fp32"] = entry["loss_change_rel_diff_vs_fp32"] = None
                entry["fp32_reference_failed"] = failed[0]
            trained = shape.get("pretrain")
            if trained:  # pre-trained on real text (--text): the figures the issue asks for
                entry["pretrain"] = {
                    k: trained.get(k) for k in ("seconds", "steps", "loss_first", "loss_last")
                }
            else:
                name = f"{name}_random_init"
            if name in calls:
                entry["attention_call"] = {
                    k: calls[name].get(k)
                    for k in (
                        "sdpa_bf16_s",
                        "sdpa_fp32_s",
                        "compensated_s",
                        "compensated_over_sdpa_bf16",
                        "compensated_over_sdpa_fp32",
                        "compensated_max_err_vs_fp32",
                        "sdpa_bf16_max_err_vs_fp32",
                    )
                }
            summary[name] = entry | {"machine": report.get("machine"), "run": stem}
        sweep = report.get("sweep8b")
        if sweep and "measure_wall_s" in sweep:
            keys = (
                "tokens",
                "plain_forward_s",
                "setup_one_batch_s",
                "peak_gb",
                "measure_forwards",
                "measure_wall_s",
                "floor_same_plain_forwards_s",
                "measure_wall_over_floor",
                "measurement_forward_mfu",
                "plain_forward_mfu",
                "forwards_per_warm_measurement",
                "extrapolated_default_sweep",
            )
            key = "sweep8b" if sweep.get("pretrain") else "sweep8b_random_init"
            summary[key] = {k: sweep.get(k) for k in keys} | {
                "pretrain": sweep.get("pretrain")
                and {k: sweep["pretrain"].get(k) for k in ("steps", "loss_first", "loss_last")},
                "peak_gb_decimal": round(sweep["peak_gb"] * 2**30 / 1e9, 1),
                "warm_forwards_all": [m["forwards"] for m in sweep["measurements"] if m["warm"]],
                "completed_on": report.get("machine"),
                "run": stem,
            }
        trained = report.get("trained")
        if trained and "own" in trained:
            summary["trained_compensated_rel_diffs"] = {
                label: {
                    k: v for k, v in trained[label]["bf16_compensated"].items() if "rel_diff" in k
                }
                | {"restored_bit_exactly": trained[label].get("bf16_restored_bit_exactly")}
                for label in ("own", "relative_ft_to_pt")
                if label in trained
            } | {"machine": report.get("machine"), "run": stem}
    out.write_text(json.dumps({"summary": summary, "runs": runs}, indent=2) + "\n")
    print(json.dumps(summary, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--combine", nargs=2, type=Path, metavar=("RUN1", "RUN2"))
    parser.add_argument(
        "--summarize", nargs="+", type=Path, metavar="RAW", help="summarise device runs into --out"
    )
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on CPU, to debug")
    parser.add_argument("--out", default="measurement_cost.json")
    parser.add_argument("--sections", default="attention,trained,llama8b,sweep8b,llama1b")
    parser.add_argument("--budget", type=float, default=540.0, help="skip sections past this (s)")
    parser.add_argument("--sweep-ratios", type=int, default=2)
    parser.add_argument(
        "--text", type=Path, help="corpora of bench/science/debian_corpora.py: pre-train on them"
    )
    parser.add_argument("--pretrain-seconds", type=float, default=60.0)
    args = parser.parse_args()
    if args.text is not None:
        PRETRAIN.update(text=str(args.text), seconds=args.pretrain_seconds)
    out = Path(args.out)
    if args.combine:
        combine(*args.combine, out)
        return
    if args.summarize:
        summarize(args.summarize, out)
        return
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    RESULTS.update(
        {
            "machine": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "torch": torch.__version__,
            "tiny": args.tiny,
            "tol": TOL,
            "plan_lr": PLAN_LR,
            "sections_skipped": [],
            "triton": triton_version(),
            "attention_hook": os.environ.get(attention.MODE_VARIABLE, "1"),
            "pretrain": dict(PRETRAIN),
        }
    )
    if device == "cuda":
        a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
        timed(lambda: a @ a)
        secs, _ = timed(lambda: a @ a, repeat=10)
        RESULTS["bf16_matmul_8192_tflops"] = round(2 * 8192**3 / secs / 1e12, 1)
        mm_f32(a, a)
        secs, _ = timed(lambda: mm_f32(a, a), repeat=10)
        RESULTS["bf16_matmul_fp32_out_8192_tflops"] = round(2 * 8192**3 / secs / 1e12, 1)
        RESULTS["mm_out_dtype_kernel"] = _MM_OUT_DTYPE.get("cuda", True)
        y = mm_f32(a, a)
        addmm_f32_(y, a, a)
        RESULTS["addmm_inplace_kernel"] = _ADDMM_INPLACE.get("cuda")
        RESULTS["sdpa_fp32_vs_bf16"] = sdpa_costs()
        del a, y
    save(out)
    if args.tiny:
        shapes = {"llama1b": (TINY, 4, 64, 2), "llama8b": (TINY | {"tied": False}, 4, 64, 2)}
        sweep = (TINY | {"tied": False}, 8, 64, 4, 1e-3)
    else:
        shapes = {
            "llama1b": (SHAPES["llama1b"], 8, 2048, 4),
            "llama8b": (SHAPES["llama8b"], 4, 2048, 2),
        }
        sweep = (SHAPES["llama8b"], 32, 2048, 2, 1e-2)
    plan: dict[str, Callable[[], None]] = {
        "attention": lambda: section_attention(shapes, device, out),
        "trained": lambda: section_trained(device, args.tiny, out),
        "llama1b": lambda: section_shape("llama1b", *shapes["llama1b"], device, out),
        "llama8b": lambda: section_shape("llama8b", *shapes["llama8b"], device, out),
        "sweep8b": lambda: section_sweep(*sweep[:4], args.sweep_ratios, sweep[4], device, out),
    }
    for name in args.sections.split(","):
        if elapsed() > args.budget:
            RESULTS["sections_skipped"].append(name)
            continue
        try:
            plan[name]()
        except Exception as exc:
            RESULTS.setdefault(name, {})["error"] = repr(exc)[:600]
            traceback.print_exc()
        free()
        RESULTS["elapsed_s"] = round(elapsed(), 1)
        save(out)
    print(json.dumps({k: v for k, v in RESULTS.items()}, indent=1, default=str)[:6000], flush=True)


if __name__ == "__main__":
    main()
