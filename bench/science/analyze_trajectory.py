"""Compare the service's answers with the real-text fine-tuning grid of `trajectory_truth.py`.

Runs here on CPU::

    .venv/bin/python -m bench.science.analyze_trajectory bench/science/results/trajectory

Reads run.json, pretrain.json, grid.json and service.json from the folder and writes
summary.json and two figures next to them. For every planned rate (a grid rate):

- the ground truth: per ratio the seed-mean drift of the held-out general loss at each K, its
  seed spread, and the LaTeX loss change; the **smallest truly flat ratio** (the smallest whose
  seed-mean drift at the largest K is within the tolerance), and the same with every larger
  ratio flat too;
- the service's answers: the first-step verdict (``recommend`` on the screen) and its
  loss-change ratio, the trajectory answer (``recommend`` with the trajectories, when this
  checkout's rules take them), and, beside them, the smallest ratio whose forecast of the
  pre-training and retention drift at N is within the tolerance (read off the forecasts the
  runner returned; labelled as such);
- each answer's cell in the grid: its drift at the largest K, within tolerance or not, and its
  distance in grid steps from the smallest truly flat ratio;
- fixed replay rules (0%, 5%, 25%, 50%) side by side;
- Spearman between forecast and observed drift at N, per rate over the ratios and over all cells;
- the cost of the trajectory sweep against the grid's, in optimizer steps and forward passes.
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

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from bench.science.analyze import spearman
from bench.science.common import write_json

REPLAY_RULES = (0.0, 0.05, 0.25, 0.5)
PRETRAIN_SET, RETENTION_SET, GRID_SET = "general", "general_heldout", "grid_heldout"


def _load(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / name
    return json.loads(path.read_text()) if path.is_file() else None


def grid_table(grid: dict[str, Any]) -> dict[tuple[float, float], dict[str, Any]]:
    """Per (ratio, lr): per K the seeds' drifts, their mean and standard deviation."""
    groups: dict[tuple[float, float], list[dict[str, Any]]] = defaultdict(list)
    for cell in grid["cells"]:
        groups[(cell["ratio"], cell["lr"])].append(cell)
    out = {}
    for key, cells in groups.items():
        steps = sorted({int(k) for c in cells for k in c["drift"]})
        row: dict[str, Any] = {"seeds": len(cells), "by_step": {}}
        for k in steps:
            entry: dict[str, Any] = {}
            for name in ("general", "latex"):
                values = [c["drift"][str(k)][name] for c in cells if str(k) in c["drift"]]
                entry[name] = float(np.mean(values))
                entry[f"{name}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
                entry[f"{name}_values"] = values
            row["by_step"][k] = entry
        out[key] = row
    return out


def smallest_flat(
    table: dict[tuple[float, float], dict[str, Any]],
    ratios: list[float],
    lr: float,
    k: int,
    tolerance: float,
) -> dict[str, float | None]:
    """The smallest ratio whose seed-mean drift at step ``k`` is within ``tolerance``.

    Also the smallest from which every larger ratio is within it (``upward``): the two differ
    when drift is not monotone in the ratio.
    """
    flat = [r for r in ratios if table[(r, lr)]["by_step"][k]["general"] <= tolerance]
    upward = [r for r in ratios if all(q in flat for q in ratios if q >= r)]
    return {"smallest": min(flat) if flat else None, "upward": min(upward) if upward else None}


def _steps_apart(ratios: list[float], a: float | None, b: float | None) -> int | None:
    if a is None or b is None:
        return None
    return abs(ratios.index(a) - ratios.index(b))


def forecast_rule(entry: dict[str, Any], tolerance: float) -> float | None:
    """Smallest ratio whose forecast pre-training and retention drifts at N are within tolerance.

    This is the bench's reading of the forecasts `run_trajectory` returned (method.md §9: the
    smallest ratio whose forecast drift of the pre-training set and of every retention set stays
    within tolerance at N), reported beside the service's own trajectory answer.
    """
    ok = []
    for traj in entry["trajectories"]:
        drifts = [f["drift"] for f in traj["forecast"] if f["role"] in ("pretraining", "retention")]
        if drifts and all(d is not None and d <= tolerance for d in drifts):
            ok.append(traj["ratio"])
    return min(ok) if ok else None


def heldout_rule(entry: dict[str, Any], name: str, tolerance: float, *, high: bool) -> float | None:
    """Smallest ratio whose forecast for the one set ``name`` is within tolerance.

    An analysis variant, not the service's rule: it reads only a held-out set's forecast (its
    point, or the top of its interval with ``high``), leaving out the pre-training set, whose
    evaluation rows the model saw in pre-training.
    """
    ok = []
    for traj in entry["trajectories"]:
        f = _forecast(traj, name)
        value = None if f is None else (f["high"] if high else f["drift"])
        if value is not None and value <= tolerance:
            ok.append(traj["ratio"])
    return min(ok) if ok else None


def _forecast(traj: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((f for f in traj["forecast"] if f["eval_set"] == name), None)


def _cell(
    table: dict[tuple[float, float], dict[str, Any]],
    ratios: list[float],
    lr: float,
    k: int,
    ratio: float | None,
    truth: dict[str, float | None],
    tolerance: float,
) -> dict[str, Any]:
    """An answer's grid cell: drift at ``k``, within tolerance, steps from the truly flat ratio."""
    if ratio is None or (ratio, lr) not in table:
        return {"ratio": ratio, "drift": None, "within_tolerance": None, "steps_from_flat": None}
    at = table[(ratio, lr)]["by_step"][k]
    return {
        "ratio": ratio,
        "drift": at["general"],
        "drift_seeds": at["general_values"],
        "latex_change": at["latex"],
        "within_tolerance": at["general"] <= tolerance,
        "steps_from_flat": _steps_apart(ratios, ratio, truth["smallest"]),
    }


def _trajectory_entry(
    svc: dict[str, Any],
    table: dict[tuple[float, float], dict[str, Any]],
    ratios: list[float],
    lr: float,
    k_max: int,
    truth: dict[str, float | None],
    tolerance: float,
    heldout: str,
) -> dict[str, Any]:
    """The trajectory answer, the forecast rule and forecast against grid, for one rate.

    ``heldout`` names the evaluation set whose forecast is set against the grid's held-out
    general drift (keys starting with ``_`` are the Spearman pools, for the caller).
    """
    trajectory = svc.get("trajectory")
    out: dict[str, Any] = {
        "trajectory": (
            _cell(table, ratios, lr, k_max, trajectory["ratio"], truth, tolerance)
            | {"reason": trajectory.get("reason"), "basis": trajectory.get("basis")}
            if trajectory is not None
            else {"error": svc.get("trajectory_error")}
        ),
        "forecast_rule": _cell(
            table, ratios, lr, k_max, forecast_rule(svc, tolerance), truth, tolerance
        ),
        "heldout_point_rule": _cell(
            table,
            ratios,
            lr,
            k_max,
            heldout_rule(svc, heldout, tolerance, high=False),
            truth,
            tolerance,
        ),
        "heldout_high_rule": _cell(
            table,
            ratios,
            lr,
            k_max,
            heldout_rule(svc, heldout, tolerance, high=True),
            truth,
            tolerance,
        ),
    }
    per_ratio = {}
    fc, ob, fc_pt = [], [], []
    for traj in svc["trajectories"]:
        r = traj["ratio"]
        held = _forecast(traj, heldout)
        pt = _forecast(traj, PRETRAIN_SET)
        measured_k = {p["step"]: p["drift"] for p in traj["points"] if p["eval_set"] == heldout}
        last = max(measured_k) if measured_k else None
        grid_at_last = table[(r, lr)]["by_step"].get(last) if last is not None else None
        per_ratio[repr(r)] = {
            "forecast_heldout": held,
            "forecast_pretraining": pt,
            "observed": table[(r, lr)]["by_step"][k_max]["general"],
            "steps_done": traj["steps_done"],
            "pruned": traj["pruned"],
            "prune_reason": traj["prune_reason"],
            "trajectory_last_step": last,
            "trajectory_drift_last": measured_k.get(last) if last is not None else None,
            "grid_drift_at_that_step": grid_at_last["general"] if grid_at_last else None,
            "trajectory_drift_by_step": measured_k,
        }
        if held is not None and held["drift"] is not None:
            fc.append(held["drift"])
            ob.append(table[(r, lr)]["by_step"][k_max]["general"])
            fc_pt.append(pt["drift"] if pt and pt["drift"] is not None else math.nan)
    out["per_ratio"] = per_ratio
    out["spearman_forecast_vs_observed"] = spearman(fc, ob)
    out["spearman_pretraining_forecast_vs_observed"] = spearman(fc_pt, ob)
    out["_fc"], out["_ob"], out["_fc_pt"] = fc, ob, fc_pt
    return out


def analyze(
    run: dict[str, Any],
    grid: dict[str, Any],
    service: dict[str, Any] | None,
    ablation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything in summary.json (see the module docstring)."""
    cfg = run["config"]
    tolerance = float(cfg["tolerance"])
    table = grid_table(grid)
    ratios = sorted({k[0] for k in table})
    lrs = sorted({k[1] for k in table})
    k_max = max(max(row["by_step"]) for row in table.values())
    steps = sorted(next(iter(table.values()))["by_step"])
    stds = [row["by_step"][k_max]["general_std"] for row in table.values()]
    stds = [s for s in stds if s is not None]
    noise = float(np.median(stds)) if stds else None
    noise_by_step = {
        k: float(np.median([s for r in table.values() if (s := r["by_step"][k]["general_std"])]))
        for k in steps
        if any(r["by_step"][k]["general_std"] for r in table.values())
    }
    out: dict[str, Any] = {
        "tolerance": tolerance,
        "k_max": k_max,
        "ratios": ratios,
        "lrs": lrs,
        "seeds": max(row["seeds"] for row in table.values()),
        "noise_std_general_k_max": noise,
        "noise_std_general_by_step": noise_by_step,
        "noise_max_std_general_k_max": max(stds) if stds else None,
        "tolerance_over_noise": tolerance / noise if noise else None,
        "grid": {
            f"{r}|{lr}": {
                "seeds": row["seeds"],
                "by_step": {str(k): v for k, v in row["by_step"].items()},
            }
            for (r, lr), row in sorted(table.items())
        },
        "rates": {},
    }
    check = grid.get("check_cell")
    if check:
        stacked = next(
            c
            for c in grid["cells"]
            if (c["seed"], c["ratio"], c["lr"]) == (check["seed"], check["ratio"], check["lr"])
        )
        out["check_cell"] = {
            "cell": [check["seed"], check["ratio"], check["lr"]],
            "by_step": {
                k: {
                    "hugging_face": v["general"],
                    "stacked": stacked["drift"][k]["general"],
                    "latex_hugging_face": v["latex"],
                    "latex_stacked": stacked["drift"][k]["latex"],
                }
                for k, v in check["drift"].items()
            },
        }
    rates = service["rates"] if service else {}
    all_forecast: list[float] = []
    all_observed: list[float] = []
    all_forecast_pt: list[float] = []
    pools: dict[str, tuple[list[float], list[float]]] = {}
    for lr in lrs:
        truth = smallest_flat(table, ratios, lr, k_max, tolerance)
        entry: dict[str, Any] = {
            "truly_flat": truth,
            "observed_drift": {
                repr(r): table[(r, lr)]["by_step"][k_max]["general"] for r in ratios
            },
            "observed_latex_change": {
                repr(r): table[(r, lr)]["by_step"][k_max]["latex"] for r in ratios
            },
            "replay_rules": {
                repr(r): _cell(table, ratios, lr, k_max, r, truth, tolerance)
                for r in REPLAY_RULES
                if (r, lr) in table
            },
        }
        svc = rates.get(repr(lr))
        if svc is not None:
            first = svc["first_step"]
            entry["first_step"] = _cell(table, ratios, lr, k_max, first["ratio"], truth, tolerance)
            entry["first_step"]["reason"] = first["reason"]
            one_step = {
                m["ratio"]: x
                for m in svc["screen"]
                for x in m["measurements"]
                if x["eval_set"] == PRETRAIN_SET
            }
            entry["screen_pretraining"] = {
                repr(r): {
                    k: one_step[r][k] for k in ("eta_c", "eta_c_low", "status", "loss_change")
                }
                | {
                    "batches_rose_at_once": sum(
                        b["status"] == "increases_immediately" for b in one_step[r]["per_batch"]
                    )
                }
                for r in ratios
                if r in one_step
            }
            entry["spearman_one_step_vs_observed"] = spearman(
                [one_step[r]["loss_change"] for r in ratios if r in one_step],
                [table[(r, lr)]["by_step"][k_max]["general"] for r in ratios if r in one_step],
            )
            entry["first_step_least_forgetting"] = _cell(
                table, ratios, lr, k_max, first["least_forgetting_ratio"], truth, tolerance
            )
            part = _trajectory_entry(svc, table, ratios, lr, k_max, truth, tolerance, RETENTION_SET)
            entry |= {k: v for k, v in part.items() if not k.startswith("_")}
            all_forecast += part["_fc"]
            all_observed += part["_ob"]
            all_forecast_pt += part["_fc_pt"]
            entry["cost"] = _cost(svc, cfg, len(ratios))
        abl = (ablation or {}).get("rates", {}).get(repr(lr))
        if abl is not None:
            sets = {}
            for name in (GRID_SET, RETENTION_SET):
                part = _trajectory_entry(abl, table, ratios, lr, k_max, truth, tolerance, name)
                sets[name] = {k: v for k, v in part.items() if not k.startswith("_")}
                pools.setdefault(name, ([], []))
                pools[name][0].extend(part["_fc"])
                pools[name][1].extend(part["_ob"])
            entry["ablation"] = sets[GRID_SET] | {
                "spearman_general_heldout": sets[RETENTION_SET]["spearman_forecast_vs_observed"],
                "per_ratio_general_heldout": sets[RETENTION_SET]["per_ratio"],
                "cost": _cost(abl, cfg, len(ratios)),
            }
            again = replay(abl, tolerance, table, ratios, lr, k_max, truth)
            pools.setdefault("replay", ([], []))
            pools["replay"][0].extend(again.pop("_fc"))
            pools["replay"][1].extend(again.pop("_ob"))
            entry["replay_current_code"] = again
            held = replay(abl, tolerance, table, ratios, lr, k_max, truth, heldout_only=True)
            held.pop("_fc")
            held.pop("_ob")
            entry["replay_current_code_heldout_only"] = held
        out["rates"][repr(lr)] = entry
    out["ablation_spearman_all_cells"] = {
        name: spearman(fc, ob) for name, (fc, ob) in pools.items()
    }
    out["spearman_all_cells"] = spearman(all_forecast, all_observed)
    out["spearman_all_cells_pretraining"] = spearman(all_forecast_pt, all_observed)
    out["targets"] = _targets(out)
    return out


def replay(
    entry: dict[str, Any],
    tolerance: float,
    table: dict[tuple[float, float], dict[str, Any]],
    ratios: list[float],
    lr: float,
    k_max: int,
    truth: dict[str, float | None],
    *,
    heldout_only: bool = False,
) -> dict[str, Any]:
    """This checkout's pruning, forecast and rules, re-applied to recorded trajectory points.

    With ``heldout_only`` the spec's ``pretraining.within_tolerance`` is false: the pre-training
    set (rows of the file the model was pre-trained on) is left out of pruning and of the
    tolerance, and only the held-out retention sets are guarded.

    The points are what the runner of the recorded run measured (run 5: one held-out batch per
    set, every 20 steps, no pruning). Walking them in order, the current
    `workers.trajectory.left_basin` decides where the mix would have been pruned; the current
    `workers.forecast.forecast_drift` fits the points up to there; `workers.recommend.recommend`
    reads the result with the real tolerance. A re-reading of measurements already made, not a
    new run: the current runner would also have measured on more batches.
    """
    from contract.results import PointResult, Status
    from contract.spec import Role, SweepSpec
    from service.db.queue import json_safe
    from workers.forecast import forecast_drift
    from workers.recommend import recommend
    from workers.trajectory import left_basin

    raw = entry["spec"] | {"tolerance": tolerance}
    if heldout_only:
        raw["pretraining"] = raw["pretraining"] | {"within_tolerance": False}
    spec = SweepSpec.model_validate(raw)
    rows, per_ratio = [], {}
    fc, ob = [], []
    for traj in entry["trajectories"]:
        points = [
            PointResult(**{**p, "role": Role(p["role"]), "status": Status(p["status"])})
            for p in traj["points"]
        ]
        steps = sorted({p.step for p in points})
        history, kept, reason = [], [], None
        for step in steps:
            at = [p for p in points if p.step == step]
            history.append(at)
            kept += at
            reason = left_basin(spec, history)
            if reason is not None and step < max(steps):
                break
        pruned = reason is not None and kept[-1].step < max(steps)
        forecast = forecast_drift(spec, kept)
        rows.append(
            _Replayed(traj["ratio"], kept[-1].step, pruned, json_safe([vars(f) for f in forecast]))
        )
        grid_f = next((f for f in forecast if f.eval_set == GRID_SET), None)
        per_ratio[repr(traj["ratio"])] = {
            "pruned_at": kept[-1].step if pruned else None,
            "reason": reason,
            "forecast_grid_heldout": json_safe(vars(grid_f)) if grid_f else None,
            "observed": table[(traj["ratio"], lr)]["by_step"][k_max]["general"],
        }
        if grid_f is not None:
            fc.append(grid_f.drift)
            ob.append(table[(traj["ratio"], lr)]["by_step"][k_max]["general"])
    rec = recommend(spec, [], trajectories=rows)
    return {
        "answer": _cell(table, ratios, lr, k_max, rec.ratio, truth, tolerance)
        | {"reason": rec.reason},
        "heldout_point_rule": _cell(
            table,
            ratios,
            lr,
            k_max,
            _smallest_within(per_ratio, tolerance),
            truth,
            tolerance,
        ),
        "per_ratio": per_ratio,
        "spearman_grid_heldout": spearman(fc, ob),
        "_fc": fc,
        "_ob": ob,
    }


def _smallest_within(per_ratio: dict[str, Any], tolerance: float) -> float | None:
    ok = [
        float(r)
        for r, v in per_ratio.items()
        if v["forecast_grid_heldout"] is not None
        and v["forecast_grid_heldout"]["drift"] is not None
        and v["forecast_grid_heldout"]["drift"] <= tolerance
    ]
    return min(ok) if ok else None


@dataclass
class _Replayed:
    """A replayed trajectory as the rules read it (the database row's fields)."""

    ratio: float | None
    steps_done: int
    pruned: bool
    forecast: list[Any] | None


def _cost(svc: dict[str, Any], cfg: dict[str, Any], n_ratios: int) -> dict[str, Any]:
    """The trajectory sweep at one planned rate against the grid's cells at that rate.

    A grid cell costs ``steps`` optimizer steps (each one forward and one backward on the
    batch) and one forward per held-out set per evaluation; the sweep costs its screen
    (``prepare``'s backward passes and forwards, each ratio's search forwards) and its
    trajectories (steps taken, measurement forwards). Forwards are counted in batches of
    ``batch_tokens``: a grid evaluation over ``eval_rows`` rows is ``eval_rows / batch_rows``
    of them.
    """
    traj = svc["trajectories"]
    screen_fwd = sum(m["forwards"] for m in svc.get("screen", []))
    traj_steps = sum(t["steps_done"] for t in traj)
    traj_fwd = sum(t["forwards"] for t in traj)
    traj_bwd = sum(t["backwards"] for t in traj)
    seeds = len(cfg["seeds"])
    grid_steps = n_ratios * seeds * cfg["steps"]
    evals = len(cfg["eval_steps"]) + 1
    grid_eval_fwd = n_ratios * seeds * evals * 2 * cfg["eval_rows"] / cfg["batch_rows"]
    grid_fwd = grid_steps + grid_eval_fwd  # one forward per step, plus the evaluations
    sweep_fwd = svc["prepare"]["forwards"] + screen_fwd + traj_fwd
    sweep_steps = traj_steps
    return {
        "sweep": {
            "optimizer_steps": sweep_steps,
            "backwards": svc["prepare"]["backwards"] + traj_bwd,
            "forwards": sweep_fwd,
            "screen_forwards": screen_fwd,
            "trajectory_forwards": traj_fwd,
            "seconds": svc["prepare"]["seconds"]
            + svc.get("screen_seconds", 0.0)
            + svc["trajectory_seconds"],
        },
        "grid": {"optimizer_steps": grid_steps, "forwards": grid_fwd},
        "steps_fraction": sweep_steps / grid_steps,
        "forwards_fraction": sweep_fwd / grid_fwd,
        "backwards_fraction": (svc["prepare"]["backwards"] + traj_bwd) / grid_steps,
    }


def _targets(out: dict[str, Any]) -> dict[str, Any]:
    """The evidence's targets, per answer kind: at how many rates they hold."""
    res: dict[str, Any] = {}
    kinds: tuple[str, ...] = ("first_step", "first_step_least_forgetting", "trajectory")
    kinds += ("forecast_rule", "replay_current_code.answer")
    kinds += ("replay_current_code_heldout_only.answer",)
    kinds += ("replay_current_code.heldout_point_rule",)
    kinds += ("replay_current_code_heldout_only.heldout_point_rule",)
    kinds += ("ablation.trajectory", "ablation.forecast_rule")
    for kind in (*kinds, "ablation.heldout_point_rule", "ablation.heldout_high_rule"):
        ok = []
        for lr, entry in out["rates"].items():
            head, _, tail = kind.partition(".")
            cell = entry.get(head, {}).get(tail) if tail else entry.get(kind)
            if not cell or (cell.get("ratio") is None and entry["truly_flat"]["smallest"] is None):
                # No flat ratio exists and the answer says none: right, but not a hit either.
                continue
            hit = bool(
                cell.get("within_tolerance")
                and cell.get("steps_from_flat") is not None
                and cell["steps_from_flat"] <= 1
            )
            ok.append((lr, hit))
        res[kind] = {"rates_hit": [lr for lr, h in ok if h], "rates_scored": len(ok)}
    res["spearman_all_cells"] = out["spearman_all_cells"]
    res["ablation_spearman_all_cells"] = out.get("ablation_spearman_all_cells")
    return res


def _figures(out: dict[str, Any], service: dict[str, Any] | None, folder: Path) -> None:
    ratios, lrs, tol, k_max = out["ratios"], out["lrs"], out["tolerance"], out["k_max"]
    fig, axes = plt.subplots(1, len(lrs), figsize=(4.2 * len(lrs), 4), squeeze=False)
    for ax, lr in zip(axes[0], lrs, strict=True):
        entry = out["rates"][repr(lr)]
        obs = [entry["observed_drift"][repr(r)] for r in ratios]
        seeds = [out["grid"][f"{r}|{lr}"]["by_step"][str(k_max)]["general_values"] for r in ratios]
        ax.plot(ratios, obs, "o-", color="k", label=f"grid, seed mean, step {k_max}")
        for r, vs in zip(ratios, seeds, strict=True):
            ax.plot([r] * len(vs), vs, ".", color="grey", ms=4)
        series = [
            (entry.get("per_ratio", {}), "tab:blue", "forecast, as the worker runs (pruned)"),
            (
                entry.get("ablation", {}).get("per_ratio", {}),
                "tab:green",
                "forecast, pruning off (grid's documents)",
            ),
        ]
        for per, colour, label in series:
            if not per:
                continue
            fc = [per[repr(r)]["forecast_heldout"] for r in ratios]
            mid = [f["drift"] if f else np.nan for f in fc]
            lo = [f["low"] if f and f["low"] is not None else np.nan for f in fc]
            hi = [f["high"] if f and f["high"] is not None else np.nan for f in fc]
            ax.plot(ratios, mid, "s--", color=colour, label=label)
            ax.fill_between(ratios, lo, hi, color=colour, alpha=0.12)
        ax.axhline(tol, color="tab:red", ls=":", label=f"tolerance {tol:g}")
        truth = entry["truly_flat"]["smallest"]
        if truth is not None:
            ax.axvline(truth, color="k", lw=0.8, ls=":", label=f"smallest truly flat: {truth:g}")
        for kind, colour in (("first_step", "tab:orange"), ("trajectory", "tab:blue")):
            r = (entry.get(kind) or {}).get("ratio")
            if r is not None:
                ax.axvline(r, color=colour, lw=1.2, label=f"{kind.replace('_', '-')}: {r:g}")
        ax.set(
            title=f"planned lr {lr:g}",
            xlabel="share of general text r",
            ylabel="held-out general loss drift (nats)",
            yscale="symlog",
        )
        ax.set_yscale("symlog", linthresh=0.01)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(folder / "trajectory_truth.png", dpi=85)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(lrs), figsize=(4.2 * len(lrs), 4), squeeze=False)
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(ratios)))
    for ax, lr in zip(axes[0], lrs, strict=True):
        for r, colour in zip(ratios, colours, strict=True):
            by = out["grid"][f"{r}|{lr}"]["by_step"]
            ks = sorted(int(k) for k in by)
            ax.plot(ks, [by[str(k)]["general"] for k in ks], "-", color=colour, label=f"r={r:g}")
            per = out["rates"][repr(lr)].get("ablation", {}).get("per_ratio", {})
            if repr(r) in per:
                by_k = {int(k): v for k, v in per[repr(r)]["trajectory_drift_by_step"].items()}
                ks_t = sorted(by_k)
                ax.plot(ks_t, [by_k[k] for k in ks_t], "x", color=colour)
        ax.axhline(tol, color="tab:red", ls=":")
        ax.set(title=f"lr {lr:g}: grid (lines), trajectory (x)", xlabel="step")
        ax.set_yscale("symlog", linthresh=0.01)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(folder / "trajectory_drift_by_step.png", dpi=85)
    plt.close(fig)


def main() -> None:
    """Parse, analyse, write summary.json and the figures; print the headline numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    folder: Path = args.folder
    run, grid = _load(folder, "run.json"), _load(folder, "grid.json")
    if run is None or grid is None or not grid.get("cells"):
        raise SystemExit(f"{folder} needs run.json and a grid.json with cells")
    service = _load(folder, "service.json")
    ablation = _load(folder, "ablation.json")
    pre = _load(folder, "pretrain.json")
    out = analyze(run, grid, service, ablation)
    pre_b = _load(folder, "pretrain_ablation.json")
    if pre is not None and pre_b is not None:
        # The ablation call re-trained the model (no checkpoint survives a call): same model?
        out["pretrain_repeat"] = {
            "identical_train_losses": pre["train_losses"] == pre_b["train_losses"],
            "identical_final_eval": pre["final_eval"] == pre_b["final_eval"],
            "final_eval": {"grid_run": pre["final_eval"], "ablation_run": pre_b["final_eval"]},
            "max_train_loss_difference": max(
                abs(a[1] - b[1])
                for a, b in zip(pre["train_losses"], pre_b["train_losses"], strict=True)
            ),
        }
    out["run"] = {
        k: run.get(k) for k in ("device", "torch", "transformers", "python", "tiny", "argv")
    }
    out["run"]["parts"] = {
        k: {"ok": v["ok"], "seconds": v["seconds"], "error": v.get("error")}
        for k, v in run["parts"].items()
    }
    out["run"]["tokens"] = run.get("tokens")
    out["run"]["total_seconds"] = run.get("total_seconds")
    if pre is not None:
        out["pretrain"] = {
            k: pre[k] for k in ("parameters", "steps", "tokens_seen", "seconds", "final_eval")
        }
        out["pretrain"]["points"] = pre["points"]
    write_json(folder / "summary.json", out)
    _figures(out, service, folder)
    brief = {
        k: out[k]
        for k in ("tolerance", "noise_std_general_k_max", "tolerance_over_noise", "targets")
    }
    print(json.dumps(brief, indent=1))
    for lr, entry in out["rates"].items():
        print(
            lr,
            json.dumps(
                {
                    k: (entry.get(k) or {}).get("ratio") if k != "truly_flat" else entry[k]
                    for k in ("truly_flat", "first_step", "trajectory", "forecast_rule")
                }
            ),
            "spearman",
            entry.get("spearman_forecast_vs_observed"),
        )


if __name__ == "__main__":
    main()
