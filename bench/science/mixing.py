"""Mixing ground truth: predicted relative critical sharpness against real fine-tuning runs.

From the pre-trained checkpoint, two things are measured in the same run:

1. The prediction (what a sharpmix sweep does, method.md §3-4): for each of B direction batches,
   one gradient per domain (general text = pre-training, arithmetic = fine-tuning) on
   `dir_rows * seq_len` tokens each; for every ratio r the fresh-AdamW direction of the mixed
   gradient `r g_pt + (1 - r) g_math`; on held-out evaluation batches of each set, `eta_c` by
   line search and the one-step loss change at every grid learning rate.
2. The ground truth: for every (seed, ratio, lr) cell, K real AdamW steps (fresh state, constant
   lr, bf16 autocast) on batches with `round(r * batch_rows)` general rows and the rest
   arithmetic, then the change of the held-out general and arithmetic losses (fp32).

Cells of one seed draw the same row indices, so differences between ratios and rates are not
blurred by different data orders; the seeds' spread gives the noise floor of a loss change.
Everything raw goes to JSON; `analyze.py` applies the recommendation rules and the statistics.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bench.science.common import Corpus, eval_loss, lm_loss, sync
from workers.curvature import (
    adamw_direction,
    domain_gradients,
    lambda_max,
    loss_change,
    measure,
    mixed_direction,
)


@dataclass(frozen=True)
class MixingConfig:
    """Grid and measurement sizes.

    Attributes:
        ratios: Fractions of pre-training (general) rows in the fine-tuning mix.
        lrs: Constant fine-tuning learning rates of the grid.
        seeds: Data-order seeds, run one after the other while time allows.
        steps: K, AdamW steps per cell.
        batch_rows: Rows per fine-tuning step.
        betas: Fine-tuning AdamW betas.
        eps: AdamW eps.
        dir_rows: Rows per direction batch and per evaluation batch of the sweep.
        batches: B, direction/evaluation batches.
        micro_rows: Rows per forward/backward when collecting gradients.
        eval_rows: Held-out rows per set for the ground-truth loss change.
        tol: Line-search tolerance.
        cost_rows: Rows of the batch on which lambda_c and power iteration are timed together.
        power_iters: Hessian-vector products of that power iteration.
    """

    ratios: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
    lrs: tuple[float, ...] = (3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3)
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 50
    batch_rows: int = 80
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    dir_rows: int = 256
    batches: int = 4
    micro_rows: int = 128
    eval_rows: int = 512
    tol: float = 1 / 16
    cost_rows: int = 64
    power_iters: int = 20

    @classmethod
    def tiny(cls) -> MixingConfig:
        """CPU-debug sizes."""
        return cls(
            ratios=(0.0, 0.3, 1.0),
            lrs=(1e-4, 1e-2),
            seeds=(0, 1),
            steps=3,
            batch_rows=10,
            dir_rows=8,
            batches=2,
            micro_rows=4,
            eval_rows=16,
            cost_rows=4,
            power_iters=3,
        )

    def splits(self) -> dict[str, tuple[int, int]]:
        """Row ranges of the held-out sets: sweep evaluation batches first, ground truth after."""
        sweep = self.batches * self.dir_rows
        return {"sweep": (0, sweep), "truth": (sweep, sweep + self.eval_rows)}


SETS = {"pt": "general_eval", "math": "math_eval"}  # evaluation set -> corpus split


def _rows(corpus: Corpus, split: str, start: int, stop: int, device: torch.device) -> Tensor:
    rows = corpus.rows[split]
    if len(rows) < stop:
        raise ValueError(f"split {split} has {len(rows)} rows, need {stop}; generate more docs")
    return rows[start:stop].to(device)


def relative_sharpness(
    model: nn.Module, corpus: Corpus, cfg: MixingConfig, device: torch.device
) -> dict[str, Any]:
    """The sweep: eta_c(r, set) per batch and one-step loss changes at every grid lr.

    Returns:
        `{"per_batch": [{"ratio", "set", "batch", "eta_c", "lower", "upper", "status",
        "forwards", "loss0", "changes": {lr: delta}}], "seconds": {...}, "forwards": {...}}`.
    """
    transform = functools.partial(
        adamw_direction, betas=cfg.betas, eps=cfg.eps, weight_decay=0.0
    )  # fresh AdamW: what a fine-tune from a checkpoint without optimizer state does
    lo, hi = cfg.splits()["sweep"]
    evals = {s: _rows(corpus, split, lo, hi, device) for s, split in SETS.items()}
    gen = torch.Generator().manual_seed(12345)
    pt_pick = torch.randperm(len(corpus.rows["general"]), generator=gen)[: hi - lo]
    ft_pick = torch.randperm(len(corpus.rows["ft_math"]), generator=gen)[: hi - lo]
    seconds: dict[str, float] = {"gradients": 0.0, "search": 0.0, "loss_change": 0.0}
    forwards = {"search": 0, "loss_change": 0}
    backward = 0
    per_batch: list[dict[str, Any]] = []
    warm: dict[str, float] = {}
    loss0: dict[tuple[str, int], float] = {}
    sync(device)
    started = time.perf_counter()
    for b in range(cfg.batches):
        sl = slice(b * cfg.dir_rows, (b + 1) * cfg.dir_rows)
        pt_rows = corpus.rows["general"][pt_pick[sl]].to(device)
        ft_rows = corpus.rows["ft_math"][ft_pick[sl]].to(device)
        t0 = time.perf_counter()
        model.train()
        grads = domain_gradients(
            model,
            lm_loss,
            [
                list(torch.split(pt_rows, cfg.micro_rows)),
                list(torch.split(ft_rows, cfg.micro_rows)),
            ],
        )
        sync(device)
        seconds["gradients"] += time.perf_counter() - t0
        backward += grads.backward_passes
        for ratio in cfg.ratios:
            direction = mixed_direction(grads, [ratio, 1 - ratio], transform)
            for name, rows in evals.items():
                batch = rows[sl]
                t0 = time.perf_counter()
                res = measure(
                    model,
                    lm_loss,
                    direction,
                    batch,
                    lr_guess=warm.get(name, cfg.lrs[0]),
                    tol=cfg.tol,
                    loss0=loss0.get((name, b)),
                    params=grads.params,
                )
                sync(device)
                seconds["search"] += time.perf_counter() - t0
                forwards["search"] += res.forwards
                loss0[(name, b)] = res.loss0
                if res.status == "ok":
                    warm[name] = res.eta
                t0 = time.perf_counter()
                changes = {}
                for lr in cfg.lrs:
                    ch = loss_change(
                        model, lm_loss, direction, batch, lr, loss0=res.loss0, params=grads.params
                    )
                    changes[repr(lr)] = ch.delta
                    forwards["loss_change"] += ch.forwards
                sync(device)
                seconds["loss_change"] += time.perf_counter() - t0
                per_batch.append(
                    {
                        "ratio": ratio,
                        "set": name,
                        "batch": b,
                        "eta_c": res.eta,
                        "lower": res.lower,
                        "upper": res.upper,
                        "status": res.status,
                        "forwards": res.forwards,
                        "loss0": res.loss0,
                        "changes": changes,
                    }
                )
            del direction
        del grads
    sync(device)
    seconds["total"] = time.perf_counter() - started
    return {
        "per_batch": per_batch,
        "seconds": seconds,
        "forwards": forwards,
        "backward_passes": backward,
        "tokens_per_batch": cfg.dir_rows * corpus.rows["general"].shape[1],
    }


def cost_comparison(
    model: nn.Module, corpus: Corpus, cfg: MixingConfig, device: torch.device
) -> dict[str, Any]:
    """lambda_c (line search) against lambda_max (power iteration) on one batch, timed.

    Direction: the gradient of the batch itself (plain GD), so that `lambda_c <= lambda_max`
    is the textbook relation (method.md §2) and both answer the same question.
    """
    batch = _rows(corpus, "general_eval", 0, cfg.cost_rows, device)
    params = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    sync(device)
    t0 = time.perf_counter()
    loss = lm_loss(model, batch)
    grads = torch.autograd.grad(loss, params)
    direction = [g.detach().float() for g in grads]
    sync(device)
    t_grad = time.perf_counter() - t0
    t0 = time.perf_counter()
    crit = measure(model, lm_loss, direction, batch, lr_guess=1e-3, params=params)
    sync(device)
    t_c = time.perf_counter() - t0
    t0 = time.perf_counter()
    top = lambda_max(model, lm_loss, batch, params=params, iterations=cfg.power_iters, rtol=1e-4)
    sync(device)
    t_max = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(5):
            lm_loss(model, batch)
    sync(device)
    t_fwd = (time.perf_counter() - t0) / 5
    return {
        "tokens": int(batch.numel()),
        "gradient_seconds": t_grad,
        "lambda_c": crit.sharpness,
        "lambda_c_status": crit.status,
        "lambda_c_forwards": crit.forwards,
        "lambda_c_seconds": t_c,
        "lambda_max": top.value,
        "lambda_max_hvps": top.iterations,
        "lambda_max_converged": top.converged,
        "lambda_max_seconds": t_max,
        "forward_seconds": t_fwd,
    }


def finetune_grid(
    model: nn.Module,
    corpus: Corpus,
    cfg: MixingConfig,
    device: torch.device,
    *,
    deadline: float,
    on_cell: Callable[[list[dict[str, Any]], dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """K real AdamW steps per (seed, ratio, lr) cell from the same checkpoint.

    Args:
        model: The pre-trained model; its weights are restored after every cell and at the end.
        corpus: Rows.
        cfg: Grid.
        device: Where to run.
        deadline: `time.perf_counter()` after which no new cell starts (seeds are outermost, so
            what is done is whole seeds plus part of one).
        on_cell: Called with the cells so far and the base losses after each cell (to save).
    """
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    lo, hi = cfg.splits()["truth"]
    evals = {s: _rows(corpus, split, lo, hi, device) for s, split in SETS.items()}
    base = {s: eval_loss(model, rows, chunk=128) for s, rows in evals.items()}
    general, maths = corpus.rows["general"], corpus.rows["ft_math"]
    use_bf16 = device.type == "cuda"
    cells: list[dict[str, Any]] = []
    per_cell = 0.0
    sync(device)
    started = time.perf_counter()
    stopped = False
    for seed in cfg.seeds:
        for ratio in cfg.ratios:
            n_pt = round(ratio * cfg.batch_rows)
            for lr in cfg.lrs:
                if time.perf_counter() + per_cell > deadline:
                    stopped = True
                    break
                t0 = time.perf_counter()
                model.load_state_dict(start)
                model.train()
                opt = torch.optim.AdamW(
                    model.parameters(), lr=lr, betas=cfg.betas, eps=cfg.eps, weight_decay=0.0
                )
                # Same stream for every cell of a seed: full-size draws, then slices.
                gen = torch.Generator().manual_seed(1000 + seed)
                train_losses = []
                for _ in range(cfg.steps):
                    pt_idx = torch.randint(len(general), (cfg.batch_rows,), generator=gen)
                    ft_idx = torch.randint(len(maths), (cfg.batch_rows,), generator=gen)
                    rows = torch.cat(
                        [general[pt_idx[:n_pt]], maths[ft_idx[: cfg.batch_rows - n_pt]]]
                    )
                    batch = rows.to(device, non_blocking=True)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                        loss = lm_loss(model, batch)
                    opt.zero_grad(set_to_none=True)
                    torch.autograd.backward(loss)
                    opt.step()
                    train_losses.append(loss.detach())
                after = {s: eval_loss(model, rows, chunk=128) for s, rows in evals.items()}
                cells.append(
                    {
                        "seed": seed,
                        "ratio": ratio,
                        "lr": lr,
                        "delta": {s: after[s] - base[s] for s in evals},
                        "after": after,
                        "train_loss_first": float(train_losses[0]),
                        "train_loss_last": float(train_losses[-1]),
                        "seconds": time.perf_counter() - t0,
                    }
                )
                per_cell = max(per_cell, time.perf_counter() - t0)
                if on_cell is not None:
                    on_cell(cells, base)
            if stopped:
                break
        if stopped:
            break
    sync(device)
    model.load_state_dict(start)
    return {
        "cells": cells,
        "base": base,
        "seconds": time.perf_counter() - started,
        "stopped_by_deadline": stopped,
        "eval_tokens": int(evals["pt"].numel()),
    }


def config_dict(cfg: MixingConfig) -> dict[str, Any]:
    """The config as JSON-ready data."""
    return asdict(cfg)
