"""Turn the GPU run's raw JSON into the evidence: statistics, the service's answers, figures.

Runs here on CPU (it needs pydantic for `contract.spec` and matplotlib, not a GPU):

    .venv/bin/python -m bench.science.analyze bench/science/results/gpu

Reads run.json, eos.json, pretrain.json and mixing.json from that folder and writes
summary.json and the PNG figures next to them. Where a later run redid only the pre-training
(`run3.json` beside it, the earlier `pretrain_run2.json` kept), `pretrain.json` is that later
run's, its record goes to `run3` and `compare_pretrain` sets the two pre-trainings side by side;
`mixing.json` stays the earlier run's. What it computes (method.md §5):

- per (ratio, set): `summarize` over the B batches (geometric mean, log-space t-interval, spread);
- the noise floor of a K-step loss change: the median over cells of the seeds' standard deviation;
  a cell "rose" when its seed-mean change is above 2 noise / sqrt(seeds) (also reported with the
  fixed 0.01 threshold of method.md §7);
- (a) safety: of the cells with lr below the lower bound of eta_c(r, pt), the share that did not
  rise; (b) Spearman correlation across ratios, per lr, of the predicted one-step and the observed
  K-step pre-training loss change; (c) `workers.recommend.recommend` per lr against the smallest
  ratio that stayed flat; (d) cell-by-cell agreement of "lr < eta_c(r, pt)" with "did not rise".
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.patches

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from bench.science.common import write_json
from contract.spec import DataRef, FinetuneRef, ModelRef, SweepSpec
from workers.curvature import CriticalLR, summarize
from workers.recommend import recommend

FIXED_THRESHOLD = 0.01  # method.md §7's "did not rise by 0.01"
ROLES = {"pt": "pretraining", "math": "finetuning"}
NAMES = {"pt": "general", "math": "math"}


@dataclass
class Row:
    """One (ratio, set) measurement in the shape `workers.recommend` reads (as a sweep row)."""

    ratio: float
    eval_set: str
    role: str
    status: str
    eta_c: float | None
    eta_c_low: float | None
    spread: float | None
    loss_change: float | None


def _load(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / name
    return json.loads(path.read_text()) if path.is_file() else None


def _inf(x: float | None) -> float:
    return math.inf if x is None else float(x)


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None when undefined."""

    def ranks(v: list[float]) -> np.ndarray:
        a = np.asarray(v, dtype=float)
        order = a.argsort(kind="mergesort")
        r = np.empty(len(a))
        r[order] = np.arange(len(a), dtype=float)
        for value in np.unique(a):  # ties share their mean rank
            tie = a == value
            r[tie] = r[tie].mean()
        return r

    if len(x) < 3:
        return None
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def sweep_stats(mixing: dict[str, Any]) -> dict[tuple[float, str], dict[str, Any]]:
    """Per (ratio, set): eta_c statistics and the mean one-step loss change per lr."""
    groups: dict[tuple[float, str], list[dict[str, Any]]] = defaultdict(list)
    for entry in mixing["sweep"]["per_batch"]:
        groups[(entry["ratio"], entry["set"])].append(entry)
    out = {}
    for key, entries in sorted(groups.items()):
        results = [
            CriticalLR(
                lower=e["lower"],
                upper=_inf(e["upper"]),
                eta=e["eta_c"],
                sharpness=2 / e["eta_c"] if e["eta_c"] > 0 else math.inf,
                forwards=e["forwards"],
                status=e["status"],
                loss0=e["loss0"],
            )
            for e in entries
        ]
        stats = summarize(results, warn=False)
        statuses = [r.status for r in results]
        # Same aggregation of statuses as workers/sweep.py's per-set summary.
        status = next((s for s in ("increases_immediately", "no_increase") if s in statuses), "ok")
        finite = [r.eta for r in results if r.eta > 0 and math.isfinite(r.eta)]
        lrs = list(entries[0]["changes"])
        immediate = status == "increases_immediately"
        low = stats.eta_ci[0] if len(finite) > 1 else (min(finite) if finite else None)
        out[key] = {
            "status": status,
            "immediate_batches": statuses.count("increases_immediately"),
            # For plots: the geometric mean over the batches that bracketed eta_c.
            "eta_c": stats.eta_geomean if finite else None,
            # For decisions, as workers/recommend.py reads a row: a batch whose loss rose at
            # once makes the set's eta_c 0 (point and lower bound).
            "eta_rule": 0.0 if immediate else (stats.eta_geomean if finite else 0.0),
            "eta_low": 0.0 if immediate else (low or 0.0),
            "eta_high": stats.eta_ci[1] if len(finite) > 1 else None,
            "spread": stats.ratio if math.isfinite(stats.ratio) else None,
            "per_batch_eta": [r.eta for r in results],
            "one_step": {lr: float(np.mean([e["changes"][lr] for e in entries])) for lr in lrs},
        }
    return out


def grid_table(mixing: dict[str, Any]) -> dict[tuple[float, float], dict[str, Any]]:
    """Per (ratio, lr): the seeds' K-step loss changes, their mean and standard deviation."""
    cells: dict[tuple[float, float], list[dict[str, Any]]] = defaultdict(list)
    for cell in mixing["grid"]["cells"]:
        cells[(cell["ratio"], cell["lr"])].append(cell)
    out = {}
    for key, group in cells.items():
        row: dict[str, Any] = {"seeds": len(group)}
        for s in ("pt", "math"):
            values = [c["delta"][s] for c in group]
            row[s] = float(np.mean(values))
            row[f"{s}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
            row[f"{s}_values"] = values
        out[key] = row
    return out


def analyze_mixing(mixing: dict[str, Any], spec_tokens: int, seq_len: int) -> dict[str, Any]:
    """(a)-(d) and the tables behind the figures."""
    cfg = mixing["config"]
    stats = sweep_stats(mixing)
    grid = grid_table(mixing)
    ratios = sorted({k[0] for k in stats})
    lrs = sorted({k[1] for k in grid})
    full = [k for k, v in grid.items() if v["seeds"] == max(g["seeds"] for g in grid.values())]
    seeds = max(g["seeds"] for g in grid.values())
    stds = [grid[k]["pt_std"] for k in full if grid[k]["pt_std"] is not None]
    noise = float(np.median(stds)) if stds else math.nan
    # A cell's seed mean has standard deviation noise / sqrt(its seeds); "rose" is 2 of those.
    threshold = 2 * noise if stds else FIXED_THRESHOLD

    def rose(key: tuple[float, float], label: str = "noise") -> bool:
        if label == "noise":
            return bool(grid[key]["pt"] > threshold / math.sqrt(grid[key]["seeds"]))
        return bool(grid[key]["pt"] > FIXED_THRESHOLD)

    per_threshold = {}
    for label in ("noise", "fixed_0.01"):
        in_basin = [k for k in grid if k[1] < stats[(k[0], "pt")]["eta_low"]]
        safe = [k for k in in_basin if not rose(k, label)]
        agree_eta = [
            k for k in grid if (k[1] < stats[(k[0], "pt")]["eta_rule"]) == (not rose(k, label))
        ]
        agree_step = [
            k
            for k in grid
            if (stats[(k[0], "pt")]["one_step"][repr(k[1])] <= 0) == (not rose(k, label))
        ]
        per_threshold[label] = {
            "threshold": threshold if label == "noise" else FIXED_THRESHOLD,
            "cells": len(grid),
            "in_basin": len(in_basin),
            "in_basin_flat": len(safe),
            "safety": len(safe) / len(in_basin) if in_basin else None,
            "in_basin_rose": sorted([list(k) for k in in_basin if rose(k, label)]),
            "in_basin_max_change_pt": max((grid[k]["pt"] for k in in_basin), default=None),
            "agree_eta_rule": len(agree_eta),
            "agree_one_step_rule": len(agree_step),
            "flat_cells": sum(not rose(k, label) for k in grid),
        }

    ranking = {}
    for lr in lrs:
        rs = [r for r in ratios if (r, lr) in grid]
        pred = [stats[(r, "pt")]["one_step"][repr(lr)] for r in rs]
        obs = [grid[(r, lr)]["pt"] for r in rs]
        pred_m = [stats[(r, "math")]["one_step"][repr(lr)] for r in rs]
        obs_m = [grid[(r, lr)]["math"] for r in rs]
        ranking[repr(lr)] = {
            "ratios": rs,
            "spearman_pt": spearman(pred, obs),
            "spearman_math": spearman(pred_m, obs_m),
        }

    service = {}
    for lr in lrs:
        spec = SweepSpec(
            model=ModelRef(path="checkpoint"),
            pretraining=DataRef(name=NAMES["pt"], path="general.jsonl"),
            finetuning=[FinetuneRef(name=NAMES["math"], path="math.jsonl")],
            ratios=ratios,
            learning_rate=lr,
            seq_len=seq_len,
            batch_tokens=spec_tokens,
            batches=cfg["batches"],
        )
        rows = [
            Row(
                ratio=r,
                eval_set=NAMES[s],
                role=ROLES[s],
                status=stats[(r, s)]["status"],
                eta_c=stats[(r, s)]["eta_c"],
                eta_c_low=stats[(r, s)]["eta_low"],
                spread=stats[(r, s)]["spread"],
                loss_change=stats[(r, s)]["one_step"][repr(lr)],
            )
            for r in ratios
            for s in ("pt", "math")
        ]
        rec = recommend(spec, rows)
        rs = [r for r in ratios if (r, lr) in grid]
        entry: dict[str, Any] = {
            "recommended": rec.ratio,
            "least_forgetting": rec.least_forgetting_ratio,
            "balanced": rec.balanced_ratio,
            "confidence": rec.confidence,
            "warnings": rec.warnings,
        }
        for label in ("noise", "fixed_0.01"):
            flat = [r for r in rs if not rose((r, lr), label)]
            # "Stays flat" for a ratio: it and every larger ratio did not rise (monotone).
            upward = [r for r in rs if all(not rose((q, lr), label) for q in rs if q >= r)]
            entry[label] = {
                "smallest_flat": min(flat) if flat else None,
                "smallest_flat_upward": min(upward) if upward else None,
                "recommended_cell_flat": (
                    None
                    if rec.ratio is None or (rec.ratio, lr) not in grid
                    else not rose((rec.ratio, lr), label)
                ),
                "least_forgetting_cell_flat": (
                    None
                    if rec.least_forgetting_ratio is None
                    or (rec.least_forgetting_ratio, lr) not in grid
                    else not rose((rec.least_forgetting_ratio, lr), label)
                ),
            }
        service[repr(lr)] = entry

    conservatism = {}
    for r in ratios:
        entry = {
            "eta_c_pt": stats[(r, "pt")]["eta_c"],
            "eta_rule_pt": stats[(r, "pt")]["eta_rule"],
            "eta_low_pt": stats[(r, "pt")]["eta_low"],
        }
        for label in ("noise", "fixed_0.01"):
            largest = None
            for lr in lrs:  # the largest grid lr up to which every grid lr stayed flat
                if (r, lr) in grid and not rose((r, lr), label):
                    largest = lr
                else:
                    break
            entry[f"largest_flat_lr_{label}"] = largest
        conservatism[repr(r)] = entry

    return {
        "ratios": ratios,
        "lrs": lrs,
        "seeds": seeds,
        "noise_std_pt": noise,
        "noise_std_math": float(
            np.median([grid[k]["math_std"] for k in full if grid[k]["math_std"] is not None])
        )
        if stds
        else None,
        "threshold": threshold,
        "cells_by_seeds": {
            str(n): sum(g["seeds"] == n for g in grid.values()) for n in range(1, seeds + 1)
        },
        "sweep": {f"{k[0]}|{k[1]}": v for k, v in stats.items()},
        "grid": {f"{k[0]}|{k[1]}": v for k, v in sorted(grid.items())},
        "a_d": per_threshold,
        "b_ranking": ranking,
        "c_service": service,
        "conservatism": conservatism,
        "seconds": {
            "sweep": mixing["sweep"]["seconds"],
            "grid": mixing["grid"].get("seconds"),
            "grid_cells": len(mixing["grid"]["cells"]),
        },
        "costs": mixing.get("costs"),
    }


def _fig_sharpness(res: dict[str, Any], path: Path) -> None:
    ratios = res["ratios"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for s, colour in (("pt", "tab:blue"), ("math", "tab:orange")):
        st = [res["sweep"][f"{r}|{s}"] for r in ratios]
        lam = [2 / x["eta_c"] if x["eta_c"] else np.nan for x in st]
        lo = [2 / x["eta_high"] if x["eta_high"] else np.nan for x in st]
        hi = [2 / x["eta_low"] if x["eta_low"] else np.nan for x in st]
        label = f"eval: {NAMES[s]}"
        axes[0].plot(ratios, lam, "o-", color=colour, label=label)
        axes[0].fill_between(ratios, lo, hi, color=colour, alpha=0.2)
        for r, x in zip(ratios, st, strict=True):
            if x["immediate_batches"]:  # lambda_c = inf there: marked at the top, with the count
                axes[0].annotate(
                    f"{x['immediate_batches']}/{len(x['per_batch_eta'])}",
                    (r, 1.0),
                    xycoords=("data", "axes fraction"),
                    xytext=(0, -12 if s == "pt" else -24),
                    textcoords="offset points",
                    ha="center",
                    fontsize=7,
                    color=colour,
                )
        eta = [x["eta_c"] or np.nan for x in st]
        low = [x["eta_low"] or np.nan for x in st]
        axes[1].plot(ratios, eta, "o-", color=colour, label=f"eta_c, {label}")
        axes[1].plot(ratios, low, ":", color=colour, label=f"lower 95% bound, {NAMES[s]}")
    for lr in res["lrs"]:
        axes[1].axhline(lr, color="grey", lw=0.6, ls="--")
    axes[0].set(
        yscale="log",
        xlabel="ratio r (fraction of pre-training data in the mix)",
        ylabel="lambda_c^{mix -> eval} = 2 / eta_c",
        title="relative critical sharpness (fresh AdamW)\n"
        "numbers at top: batches whose loss rose at once (lambda_c = inf)",
    )
    axes[1].set(
        yscale="log",
        xlabel="ratio r",
        ylabel="eta_c",
        title="eta_c (geo. mean of bracketed batches); dashed: grid lrs\n"
        "lower bound is 0 (not drawn) where a batch rose at once",
    )
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _fig_heatmaps(res: dict[str, Any], path: Path) -> None:
    ratios, lrs = res["ratios"], res["lrs"]
    panels = [
        ("pt", "K-step change, general (pre-training) loss"),
        ("math", "K-step change, math loss"),
        ("pred", "predicted one-step change, general loss"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(19, 5))
    for ax, (key, title) in zip(axes, panels, strict=True):
        m = np.full((len(lrs), len(ratios)), np.nan)
        for i, lr in enumerate(lrs):
            for j, r in enumerate(ratios):
                if key == "pred":
                    m[i, j] = res["sweep"][f"{r}|pt"]["one_step"][repr(lr)]
                elif f"{r}|{lr}" in res["grid"]:
                    m[i, j] = res["grid"][f"{r}|{lr}"][key]
        # Symmetric log-like colour scale: changes span 1e-4 to >1.
        vmax = float(np.nanmax(np.abs(m))) or 1.0
        linthresh = 1e-6 if key == "pred" else 1e-4
        norm = matplotlib.colors.SymLogNorm(linthresh=linthresh, vmin=-vmax, vmax=vmax)
        im = ax.imshow(m, cmap="RdBu_r", norm=norm, aspect="auto", origin="lower")
        for i, lr in enumerate(lrs):
            for j, r in enumerate(ratios):
                if not np.isnan(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.1e}", ha="center", va="center", fontsize=6.5)
                if (
                    lr < res["sweep"][f"{r}|pt"]["eta_low"]
                ):  # predicted in-basin: lr below the lower bound of eta_c(r, pt)
                    ax.add_patch(
                        matplotlib.patches.Rectangle(
                            (j - 0.5, i - 0.5), 1, 1, fill=False, lw=1.5, ec="k"
                        )
                    )
        ax.set_xticks(range(len(ratios)), [f"{r:g}" for r in ratios])
        ax.set_yticks(range(len(lrs)), [f"{lr:.0e}" for lr in lrs])
        ax.set(xlabel="ratio r", ylabel="learning rate", title=title)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle("black boxes: predicted in-basin (lr < lower bound of eta_c(r, general))")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _fig_eos(eos: dict[str, Any], path: Path) -> None:
    runs = eos["runs"]
    fig, axes = plt.subplots(2, len(runs), figsize=(3.6 * len(runs), 5.6), squeeze=False)
    for k, run in enumerate(runs):
        pts = run["points"]
        steps = [p["step"] for p in pts]
        ax = axes[0][k]
        ax.plot(steps, [p["lambda_max"] for p in pts], "-", label="lambda_max (power it.)")
        ax.plot(steps, [p["lambda_c"] or np.nan for p in pts], ".", ms=3, label="lambda_c")
        ax.plot(steps, [p["lambda_dir"] for p in pts], "x", ms=3, label="lambda_dir")
        ax.axhline(run["two_over_lr"], color="k", ls="--", lw=0.8, label="2 / eta")
        ax.set(title=f"GD, eta = {run['lr']:g}", xlabel="step", ylabel="sharpness")
        ax.set_ylim(0, 1.4 * run["two_over_lr"])
        if k == 0:
            ax.legend(fontsize=7)
        axes[1][k].plot(steps, [p["loss"] for p in pts])
        axes[1][k].set(yscale="log", xlabel="step", ylabel="train loss (full batch)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _fig_pretrain(pre: dict[str, Any], path: Path) -> None:
    pts = pre["points"]
    steps = [p["step"] for p in pts]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ls = np.asarray(pre["train_losses"])
    axes[0].plot(ls[:, 0], ls[:, 1], lw=0.8, label="train loss")
    axes[0].plot(steps, [p["eval"]["general_eval"] for p in pts], "o", ms=3, label="eval general")
    axes[0].plot(steps, [p["eval"]["math_eval"] for p in pts], "s", ms=3, label="eval math")
    axes[0].set(yscale="log", xlabel="step", ylabel="loss", title="pre-training (WSD schedule)")
    twin = axes[0].twinx()
    twin.plot(steps, [p["lr"] for p in pts], "k--", lw=0.8)
    twin.set_ylabel("learning rate (dashed)")
    axes[0].legend(fontsize=7)
    axes[1].plot(steps, [p["lambda_c_big"] for p in pts], "o-", ms=3, label="lambda_c (batch)")
    axes[1].plot(steps, [p["lambda_c_small"] for p in pts], ".", label="lambda_c (slice)")
    if "lambda_c_fixed" in pts[0]:
        axes[1].plot(
            steps, [p["lambda_c_fixed"] for p in pts], "s-", ms=3, label="lambda_c (fixed held-out)"
        )
    axes[1].plot(steps, [p["lambda_dir_small"] for p in pts], "x", ms=3, label="lambda_dir (slice)")
    axes[1].plot(steps, [p["two_over_lr"] for p in pts], "k--", lw=0.8, label="2 / eta")
    axes[1].set(yscale="log", xlabel="step", title="along the AdamW update direction")
    axes[1].legend(fontsize=7)
    axes[2].plot(steps, [p["lambda_max_pre"] for p in pts], "o-", ms=3, label="precond. lambda_max")
    axes[2].plot(
        steps, [p["adam_threshold"] for p in pts], "k--", lw=0.8, label="(2+2b1)/((1-b1) eta)"
    )
    axes[2].set(yscale="log", xlabel="step", title="preconditioned Hessian (slice)")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def summarize_eos(eos: dict[str, Any]) -> list[dict[str, Any]]:
    """Per lr: start and end sharpness, the ratio to 2/eta over the last quarter, costs."""
    out = []
    for run in eos["runs"]:
        pts = run["points"]
        tail = pts[len(pts) * 3 // 4 :]
        two = run["two_over_lr"]

        def mean(key: str, rows: list[dict[str, Any]]) -> float:
            return float(np.mean([p[key] for p in rows if p[key] is not None]))

        out.append(
            {
                "lr": run["lr"],
                "two_over_lr": two,
                "lambda_max_start": pts[0]["lambda_max"],
                "lambda_max_peak": max(p["lambda_max"] for p in pts),
                "tail_lambda_max_over_2_eta": mean("lambda_max", tail) / two,
                "tail_lambda_c_over_2_eta": mean("lambda_c", tail) / two,
                "tail_lambda_dir_over_2_eta": mean("lambda_dir", tail) / two,
                "loss_start": pts[0]["loss"],
                "loss_end": pts[-1]["loss"],
                "mean_forwards_c": mean("forwards_c", pts),
                "mean_seconds_c": mean("seconds_c", pts),
                "mean_hvps_max": mean("hvps_max", pts),
                "mean_seconds_max": mean("seconds_max", pts),
            }
        )
    return out


def _range(values: list[float]) -> dict[str, float] | None:
    return (
        {"median": float(np.median(values)), "min": min(values), "max": max(values)}
        if values
        else None
    )


def summarize_pretrain(pre: dict[str, Any]) -> dict[str, Any]:
    """Sharpness in the stable phase against the decay, the preconditioned check, and costs.

    Progressive sharpening in the decay shows as `lambda_c` rising while `eta` falls: reported
    as the values at the end of the stable phase and at the last step, the stable phase's range
    (its noise), and the Spearman correlation of `lambda_c` with the step over the decay points.
    """
    pts = pre["points"]
    peak = max(p["lr"] for p in pts)
    stable = [p for p in pts if p["lr"] >= peak * 0.999]
    decay = [p for p in pts if p["lr"] < peak * 0.999 and p["step"] > stable[0]["step"]]
    keys = [k for k in ("big", "small", "fixed") if f"lambda_c_{k}" in pts[0]]
    series = {k: f"lambda_c_{k}" for k in keys} | {
        "dir_small": "lambda_dir_small",
        "max_pre": "lambda_max_pre",  # its `_over_2_eta` entries compare with the wrong edge
    }

    def pick(p: dict[str, Any]) -> dict[str, Any]:
        names = ["step", "lr", "lambda_dir_small", "lambda_max_pre", "adam_threshold"]
        names += ["two_over_lr", "train_loss"] + [f"lambda_c_{k}" for k in keys]
        return {k: p[k] for k in names} | {"eval": p["eval"]}

    sharpening = {}
    for k, name in series.items():
        sharpening[k] = {
            "stable": _range([p[name] for p in stable]),
            "decay": _range([p[name] for p in decay]),
            "stable_over_2_eta": _range([p[name] / p["two_over_lr"] for p in stable]),
            "end_over_2_eta": pts[-1][name] / pts[-1]["two_over_lr"],
            "spearman_step_decay": spearman([p["step"] for p in decay], [p[name] for p in decay]),
            "decay_above_stable_max": sum(
                p[name] > max(q[name] for q in stable) for p in decay if stable
            ),
            "rises_in_decay": bool(decay and stable) and pts[-1][name] > stable[-1][name],
        }
    pre_max = [p["lambda_max_pre"] for p in pts]
    # A shifted restart of power iteration (after a negative dominant eigenvalue) can stop after
    # two HVPs at the shift plus the bulk's mean curvature: values orders of magnitude below
    # the rest. Counted, and left out of the lambda_c <= lambda_max check.
    floor = 1e-3 * float(np.median([v for v in pre_max if v > 0]))
    tiny = [p for p in pts if p["lambda_max_pre"] < floor]
    plausible = [p for p in pts if p["lambda_max_pre"] >= floor]
    above = [p for p in stable if p["lambda_max_pre"] > p["adam_threshold"]]
    return {
        "parameters": pre["parameters"],
        "steps": pre["steps"],
        "every": pre.get("every"),
        "decay_frac": pre["config"]["decay_frac"],
        "peak_lr": pre["config"]["peak_lr"],
        "power_iters": pre["config"]["power_iters"],
        "tokens_seen": pre["tokens_seen"],
        "seconds": pre["seconds"],
        "measure_seconds": pre.get("measure_seconds"),
        "final_eval": pre["final_eval"],
        "first_point": pick(pts[0]),
        "end_of_stable": pick(stable[-1]) if stable else None,
        "first_of_decay": pick(decay[0]) if decay else None,
        "end_of_decay": pick(pts[-1]),
        "stable_points": len(stable),
        "decay_points": len(decay),
        "sharpening": sharpening,
        "lambda_c_rises_in_decay": sharpening["big"]["rises_in_decay"],
        "lambda_max_pre": {
            "negative": sum(v < 0 for v in pre_max),
            "implausibly_small": len(tiny),
            "implausibly_small_steps": [p["step"] for p in tiny],
            "implausibly_small_values": [p["lambda_max_pre"] for p in tiny],
            "plausible_range": _range([p["lambda_max_pre"] for p in plausible]),
            "not_converged": sum(not p["converged_max"] for p in pts),
            "range": _range(pre_max),
            "stable_above_adam_threshold": len(above),
            "decay_above_adam_threshold": sum(
                p["lambda_max_pre"] > p["adam_threshold"] for p in decay
            ),
            "hvps": _range([float(p["hvps_max"]) for p in pts]),
        },
        "mean_forwards_c_big": float(np.mean([p["forwards_c_big"] for p in pts])),
        "mean_seconds_c_big": float(np.mean([p["seconds_c_big"] for p in pts])),
        "mean_seconds_c_small": float(np.mean([p["seconds_c_small"] for p in pts])),
        "mean_seconds_c_fixed": float(np.mean([p["seconds_c_fixed"] for p in pts]))
        if "fixed" in keys
        else None,
        "mean_hvps_max": float(np.mean([p["hvps_max"] for p in pts])),
        "mean_seconds_max": float(np.mean([p["seconds_max"] for p in pts])),
        "lambda_c_small_le_pre_lambda_max": sum(
            p["lambda_c_small"] <= p["lambda_max_pre"] for p in pts
        ),
        "lambda_c_small_le_pre_lambda_max_plausible": sum(
            p["lambda_c_small"] <= p["lambda_max_pre"] for p in plausible
        ),
        "plausible_points": len(plausible),
        "points": len(pts),
    }


def compare_pretrain(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Two pre-training records of the same config: was training reproduced, what changed?

    `identical_*` compare the recorded numbers exactly (same weights cannot be checked: no
    checkpoint is kept). The preconditioned `lambda_max` is set side by side per step, as the
    ratio new / old and the steps where it differs by more than 10x.
    """
    pairs = list(zip(old["points"], new["points"], strict=True))
    ratio = [(q["lambda_max_pre"] / p["lambda_max_pre"], p, q) for p, q in pairs]
    keys = [k for k in ("big", "small", "fixed") if f"lambda_c_{k}" in new["points"][0]]
    return {
        "same_config": old["config"] == new["config"],
        "identical_train_losses": old["train_losses"] == new["train_losses"],
        "identical_final_eval": old["final_eval"] == new["final_eval"],
        "identical_lambda_c": all(
            p[f"lambda_c_{k}"] == q[f"lambda_c_{k}"] for p, q in pairs for k in keys
        ),
        "identical_eval_points": all(p["eval"] == q["eval"] for p, q in pairs),
        "lambda_max_ratio_new_over_old": _range([r for r, _, _ in ratio if 0.1 <= r <= 10]),
        "lambda_max_changed_10x": [
            {"step": p["step"], "old": p["lambda_max_pre"], "new": q["lambda_max_pre"]}
            for r, p, q in ratio
            if not 0.1 <= r <= 10
        ],
        "seconds": {"old": old["seconds"], "new": new["seconds"]},
        "measure_seconds": {"old": old.get("measure_seconds"), "new": new.get("measure_seconds")},
        "mean_hvps_max": {
            "old": float(np.mean([p["hvps_max"] for p, _ in pairs])),
            "new": float(np.mean([q["hvps_max"] for _, q in pairs])),
        },
        "mean_seconds_max": {
            "old": float(np.mean([p["seconds_max"] for p, _ in pairs])),
            "new": float(np.mean([q["seconds_max"] for _, q in pairs])),
        },
    }


def main() -> None:
    """Parse, analyse what is there, write summary.json and figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, nargs="?", default=Path("bench/science/results/gpu"))
    args = parser.parse_args()
    folder: Path = args.folder
    summary: dict[str, Any] = {}
    run = _load(folder, "run.json")
    if run is not None:
        keys = ("device", "torch", "transformers", "tiny", "argv", "parts_run", "total_seconds")
        summary["run"] = {k: run.get(k) for k in keys}
        summary["run"]["parts"] = {
            k: {"ok": v["ok"], "seconds": v["seconds"], "error": v.get("error")}
            for k, v in run["parts"].items()
        }
        summary["run"]["corpus"] = run.get("corpus")
    run3 = _load(folder, "run3.json")
    if run3 is not None:
        summary["run3"] = {
            k: run3.get(k) for k in ("device", "torch", "transformers", "argv", "total_seconds")
        }
        summary["run3"]["parts"] = {
            k: {"ok": v["ok"], "seconds": v["seconds"], "error": v.get("error")}
            for k, v in run3["parts"].items()
        }
    eos = _load(folder, "eos.json")
    if eos is not None and eos["runs"]:
        summary["eos"] = summarize_eos(eos)
        _fig_eos(eos, folder / "eos.png")
    pre = _load(folder, "pretrain.json")
    if pre is not None and pre["points"]:
        summary["pretrain"] = summarize_pretrain(pre)
        _fig_pretrain(pre, folder / "pretrain_sharpness.png")
        old = _load(folder, "pretrain_run2.json")
        if old is not None and old["points"]:
            summary["pretrain_run2"] = summarize_pretrain(old)
            summary["pretrain_run2_vs_run3"] = compare_pretrain(old, pre)
    mixing = _load(folder, "mixing.json")
    if mixing is not None and "sweep" in mixing and mixing.get("grid", {}).get("cells"):
        seq_len = pre["config"]["seq_len"] if pre else 128
        tokens = mixing["sweep"]["tokens_per_batch"]
        res = analyze_mixing(mixing, tokens, seq_len)
        summary["mixing"] = res
        _fig_sharpness(res, folder / "relative_sharpness.png")
        _fig_heatmaps(res, folder / "loss_change_heatmaps.png")
    write_json(folder / "summary.json", summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "mixing"}, indent=1)[:4000])
    if "mixing" in summary:
        m = summary["mixing"]
        brief = {k: m[k] for k in ("noise_std_pt", "threshold", "a_d", "b_ranking", "c_service")}
        print(json.dumps(brief, indent=1, default=str)[:8000])


if __name__ == "__main__":
    main()
