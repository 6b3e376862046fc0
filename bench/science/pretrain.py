"""Pre-training a small OLMo-2-style model with AdamW and warmup-stable-decay, watching sharpness.

The model learns the generated "general" language (a fixed little world of people and facts)
with 5% arithmetic word problems mixed in, as the probe of method.md §7 did. Every `every` steps,
after the backward pass and gradient clipping and before `optimizer.step()`:

- `lambda_c` along the step AdamW is about to take (`update_direction(optimizer)`: its moments,
  bias correction and weight decay), on the training batch that produced the gradient, again
  on a small slice of that batch, and on one fixed held-out general batch (the same rows at every
  point, so batch-to-batch noise does not blur the trend);
- the preconditioned `lambda_max` of `P^{-1/2} H P^{-1/2}` with Adam's `P = sqrt(v_hat) + eps`
  (the `v` the step will use), by power iteration on the small slice, and `lambda_dir` there;
- the thresholds: `2 / eta` for the step itself and Adam's `(2 + 2 b1) / ((1 - b1) eta)` for the
  preconditioned sharpness (method.md §5).

Progressive sharpening shows as `lambda_c` rising when the decay phase lowers `eta`.
The number of steps is fitted to a time budget after timing the first steps, so a slower
machine gives a shorter (but complete) schedule rather than a killed run.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench.science.common import Corpus, eval_loss, lm_loss, olmo2, sync, wsd_lr
from workers.curvature import (
    AdamState,
    adam_preconditioner,
    direction_params,
    directional_sharpness,
    lambda_max,
    measure,
    update_direction,
)


@dataclass(frozen=True)
class PretrainConfig:
    """Model shape and schedule.

    Attributes:
        hidden: Model width.
        layers: Transformer blocks.
        heads: Attention heads.
        seq_len: Tokens per row.
        batch_rows: Rows per step.
        peak_lr: Peak AdamW learning rate.
        warmup: Warmup steps.
        decay_frac: Share of the steps in the final linear decay to 0.
        betas: AdamW betas.
        weight_decay: AdamW weight decay.
        clip: Gradient-norm clip.
        math_share: Probability that a row is arithmetic.
        max_steps: Upper bound on steps.
        min_steps: Lower bound on steps (whatever the budget says).
            The defaults (1,000 steps, decay over the last half) stop the model while it is still
            learning when the decay starts; run 1 (2,543 steps, decay 0.3) had reached the
            language's entropy floor by step ~1,000, leaving nothing to sharpen in the decay.
        budget_s: Seconds for training plus measurements.
        points: Measurements over the run (about).
        small_rows: Rows of the slice for `lambda_max` / `lambda_dir`.
        power_iters: Hessian-vector products per `lambda_max` (both runs of its shifted
            restart together).
        seed: Seed of initialisation and batches.
    """

    hidden: int = 512
    layers: int = 8
    heads: int = 8
    seq_len: int = 128
    batch_rows: int = 128
    peak_lr: float = 2e-3
    warmup: int = 100
    decay_frac: float = 0.5
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    clip: float = 1.0
    math_share: float = 0.05
    max_steps: int = 1000
    min_steps: int = 300
    budget_s: float = 170.0
    points: int = 40
    small_rows: int = 16
    power_iters: int = 30
    seed: int = 0

    @classmethod
    def tiny(cls) -> PretrainConfig:
        """CPU-debug sizes."""
        return cls(
            hidden=32,
            layers=2,
            heads=2,
            seq_len=32,
            batch_rows=8,
            warmup=5,
            max_steps=40,
            min_steps=40,
            budget_s=60.0,
            points=4,
            small_rows=4,
            power_iters=3,
        )


def _batch(
    corpus: Corpus, cfg: PretrainConfig, gen: torch.Generator, device: torch.device
) -> Tensor:
    """`(B, T)` rows: each is arithmetic with probability `math_share`, else general text."""
    general, maths = corpus.rows["general"], corpus.rows["pt_math"]
    use_math = torch.rand(cfg.batch_rows, generator=gen) < cfg.math_share
    g_idx = torch.randint(len(general), (cfg.batch_rows,), generator=gen)
    m_idx = torch.randint(len(maths), (cfg.batch_rows,), generator=gen)
    return torch.where(use_math[:, None], maths[m_idx], general[g_idx]).to(device)


def _preconditioner(opt: torch.optim.AdamW, params: list[Tensor]) -> list[Tensor]:
    """Adam's `P = sqrt(v_hat) + eps` for the step about to be taken (v updated by this grad)."""
    group = opt.param_groups[0]
    b2 = float(group["betas"][1])
    states = [opt.state[p] for p in params]
    grads = [p.grad for p in params if p.grad is not None]  # direction_params: all have one
    v_next = [
        b2 * s["exp_avg_sq"] + (1 - b2) * g.float() ** 2 for s, g in zip(states, grads, strict=True)
    ]
    state = AdamState(
        exp_avg=[s["exp_avg"] for s in states],
        exp_avg_sq=v_next,
        steps=[int(s["step"]) + 1 for s in states],
    )
    return adam_preconditioner(state, betas=group["betas"], eps=float(group["eps"]))


def _measure(
    model: nn.Module,
    opt: torch.optim.AdamW,
    batch: Tensor,
    fixed: Tensor,
    cfg: PretrainConfig,
    lr: float,
    warm: dict[str, float],
) -> dict[str, Any]:
    """All sharpness measures at the current step (the optimizer's gradients are in place)."""
    device = batch.device
    direction = update_direction(opt)
    params = direction_params(opt)
    small = batch[: cfg.small_rows]
    out: dict[str, Any] = {"lr": lr, "two_over_lr": 2 / lr}
    b1 = float(cfg.betas[0])
    out["adam_threshold"] = (2 + 2 * b1) / ((1 - b1) * lr)
    for key, data in (("big", batch), ("small", small), ("fixed", fixed)):
        sync(device)
        t0 = time.perf_counter()
        crit = measure(model, lm_loss, direction, data, lr_guess=warm.get(key, lr), params=params)
        sync(device)
        out[f"lambda_c_{key}"] = crit.sharpness
        out[f"eta_c_{key}"] = crit.eta
        out[f"status_{key}"] = crit.status
        out[f"forwards_c_{key}"] = crit.forwards
        out[f"seconds_c_{key}"] = time.perf_counter() - t0
        if crit.status == "ok":
            warm[key] = crit.eta
    t0 = time.perf_counter()
    ds = directional_sharpness(model, lm_loss, direction, small, params=params)
    sync(device)
    out["lambda_dir_small"] = ds.value
    out["seconds_dir"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pre = _preconditioner(opt, params)
    top = lambda_max(
        model,
        lm_loss,
        small,
        params=params,
        preconditioner=pre,
        iterations=cfg.power_iters,
        rtol=1e-3,
    )
    sync(device)
    out["lambda_max_pre"] = top.value
    out["hvps_max"] = top.iterations
    out["converged_max"] = top.converged
    out["seconds_max"] = time.perf_counter() - t0
    model.train()
    return out


def run_pretrain(
    cfg: PretrainConfig, corpus: Corpus, device: torch.device, *, checkpoint: Path | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Pre-train and measure; returns the trained model (fp32, on `device`) and the record.

    Args:
        cfg: Shape and schedule.
        corpus: Packed rows (`general`, `pt_math`, `general_eval`, `math_eval`).
        device: Where to train.
        checkpoint: Where to save the state dict for the mixing experiment, if anywhere.
    """
    torch.manual_seed(cfg.seed)
    model = olmo2(
        corpus.vocab_size,
        corpus.eos,
        hidden=cfg.hidden,
        layers=cfg.layers,
        heads=cfg.heads,
        seq_len=cfg.seq_len,
    ).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.peak_lr, betas=cfg.betas, weight_decay=cfg.weight_decay
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    evals = {k: corpus.rows[k][:64].to(device) for k in ("general_eval", "math_eval")}
    fixed = corpus.rows["general_eval"][-cfg.batch_rows :].to(device)  # not in `evals`
    use_bf16 = device.type == "cuda"  # bf16 autocast for training speed; measurements stay fp32
    model.train()
    started = time.perf_counter()
    total, every = cfg.max_steps, max(1, cfg.max_steps // cfg.points)
    calib = (5, 25)  # steps timed to fit the schedule to the budget (after CUDA warm-up)
    losses: list[tuple[int, float]] = []
    points: list[dict[str, Any]] = []
    warm: dict[str, float] = {}
    measure_s = 0.0
    step = 0
    t_calib = 0.0
    while step < total:
        if step == calib[0]:
            sync(device)
            t_calib = time.perf_counter()
        if step == calib[1] and cfg.min_steps < cfg.max_steps:
            sync(device)
            per_step = (time.perf_counter() - t_calib) / (calib[1] - calib[0])
            # 80% of the budget for steps; measurements and evals take the rest.
            total = int(min(cfg.max_steps, max(cfg.min_steps, 0.8 * cfg.budget_s / per_step)))
            every = max(1, total // cfg.points)
            print(
                f"pretrain: {per_step * 1e3:.1f} ms/step -> {total} steps, every {every}",
                flush=True,
            )
        lr = wsd_lr(
            step, total=total, peak=cfg.peak_lr, warmup=cfg.warmup, decay_frac=cfg.decay_frac
        )
        for group in opt.param_groups:
            group["lr"] = lr
        batch = _batch(corpus, cfg, gen, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = lm_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        last = step == total - 1
        if step >= calib[1] and (step % every == 0 or last):
            t0 = time.perf_counter()
            point = _measure(model, opt, batch, fixed, cfg, lr, warm)
            point["step"] = step
            point["train_loss"] = float(loss.detach())
            point["eval"] = {k: eval_loss(model, v, chunk=64) for k, v in evals.items()}
            points.append(point)
            measure_s += time.perf_counter() - t0
            print(
                f"pretrain step {step} lr {lr:.2e} loss {float(loss.detach()):.3f} "
                f"lambda_c {point['lambda_c_big']:.3g} 2/lr {2 / lr:.3g} "
                f"pre-lambda_max {point['lambda_max_pre']:.3g} "
                f"adam-thr {point['adam_threshold']:.3g}",
                flush=True,
            )
        opt.step()
        if step % 10 == 0 or last:
            losses.append((step, float(loss.detach())))
        step += 1
    sync(device)
    seconds = time.perf_counter() - started
    full_evals = {
        k: eval_loss(model, corpus.rows[k][:512].to(device), chunk=128)
        for k in ("general_eval", "math_eval")
    }
    if checkpoint is not None:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), checkpoint)
    record = {
        "config": asdict(cfg),
        "parameters": n_params,
        "vocab_size": corpus.vocab_size,
        "steps": total,
        "every": every,
        "seconds": seconds,
        "measure_seconds": measure_s,
        "train_losses": losses,
        "points": points,
        "final_eval": full_evals,
        "tokens_seen": total * cfg.batch_rows * cfg.seq_len,
    }
    model.eval()
    return model, record
