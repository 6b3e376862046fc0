"""Runs 6 and 7 of the trajectory ground truth: the service's answers against the grid, as run.

Run 6 (`trajectory_truth.py --parts service --held-out-guard`) re-trained run 4's model (every
recorded pre-training loss equal) and ran the worker's own first-step screen, trajectories and
rules per planned rate, with the pre-training rows (text the model was trained on) left out of
the tolerance rule and two held-out retention sets guarded: a seeded sample of every held-out
document (``general_heldout``) and exactly the grid's held-out documents (``grid_heldout``).
Run 7 is the same call with later worker code (pruning counts only the measurements after the
burn-in; a descent within the loss's rounding band is a tie in the search). Run 8 reads the
trend since the burn-in when pruning, twice: trajectories on every ratio (``service_run8.json``)
and only on the three the worker's planner picks from the screen (``--trajectories 3``,
``service_run8_auto3.json``; pass ``--run 8_auto3``). This script sets a
run's answers (``service_run<N>.json``) against run 4's grid (``grid.json``), writes
``summary_run<N>.json`` beside them and prints the table of docs/evidence.md.

    .venv/bin/python -m bench.science.analyze_run6 bench/science/results/trajectory
    .venv/bin/python -m bench.science.analyze_run6 bench/science/results/trajectory --run 7
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean
from typing import Any

from bench.science.analyze import spearman

TOLERANCE = 0.02
K_MAX = "300"


def _truth(grid: dict[str, Any]) -> dict[tuple[float, float], float]:
    """Seed-mean drift of the grid's held-out general loss at K = 300, per (lr, ratio)."""
    cells: dict[tuple[float, float], list[float]] = {}
    for cell in grid["cells"]:
        cells.setdefault((cell["lr"], cell["ratio"]), []).append(cell["drift"][K_MAX]["general"])
    return {key: mean(values) for key, values in cells.items()}


def analyze(folder: Path, run: int | str = 6) -> dict[str, Any]:
    """Per planned rate: the answers, the truly flat ratio, hits; Spearman; cost."""
    grid = json.loads((folder / "grid.json").read_text())
    service = json.loads((folder / f"service_run{run}.json").read_text())
    truth = _truth(grid)
    ratios = sorted({r for _, r in truth})
    out: dict[str, Any] = {"tolerance": TOLERANCE, "rates": {}, "cells": []}
    forecasts: list[float] = []
    observed: list[float] = []
    steps = forwards = backwards = 0
    for key, entry in service["rates"].items():
        lr = float(key)
        flat = next((r for r in ratios if truth[(lr, r)] <= TOLERANCE), None)
        answer = entry["trajectory"]["ratio"]
        first = entry["first_step"]["ratio"]
        distance = (
            abs(ratios.index(answer) - ratios.index(flat))
            if answer is not None and flat is not None
            else None
        )
        hit = (
            answer is not None
            and truth[(lr, answer)] <= TOLERANCE
            and distance is not None
            and distance <= 1
        )
        for trajectory in entry["trajectories"]:
            steps += trajectory["steps_done"]
            forwards += trajectory["forwards"]
            backwards += trajectory["backwards"]
            grid_forecast = next(
                f for f in trajectory["forecast"] if f["eval_set"] == "grid_heldout"
            )
            forecasts.append(grid_forecast["drift"])
            observed.append(truth[(lr, trajectory["ratio"])])
            out["cells"].append(
                {
                    "lr": lr,
                    "ratio": trajectory["ratio"],
                    "steps_done": trajectory["steps_done"],
                    "pruned": trajectory["pruned"],
                    "prune_reason": trajectory["prune_reason"],
                    "forecast_grid_heldout": grid_forecast,
                    "forecast_general_heldout": next(
                        f for f in trajectory["forecast"] if f["eval_set"] == "general_heldout"
                    ),
                    "observed_drift": truth[(lr, trajectory["ratio"])],
                }
            )
        forwards += entry["prepare"]["forwards"] + sum(
            m["forwards"] for s in entry["screen"] for m in s["measurements"]
        )
        backwards += entry["prepare"]["backwards"]
        out["rates"][key] = {
            "truly_flat": flat,
            "trajectory_answer": answer,
            "answer_drift": truth[(lr, answer)] if answer is not None else None,
            "grid_steps_from_flat": distance,
            "hit": hit,
            "first_step_answer": first,
            "reason": entry["trajectory"]["reason"],
            "replay": {r: truth[(lr, r)] for r in (0.0, 0.05, 0.25, 0.5) if (lr, r) in truth},
        }
    scored = [v for v in out["rates"].values() if v["truly_flat"] is not None]
    out["hits"] = sum(v["hit"] for v in scored)
    out["rates_scored"] = len(scored)
    out["spearman_forecast_vs_observed"] = spearman(forecasts, observed)
    per_rate = len(service["rates"])
    out["cost"] = {
        "optimizer_steps": steps,
        "grid_optimizer_steps": grid["optimizer_steps"],
        "steps_fraction": steps / grid["optimizer_steps"],
        "forwards": forwards,
        "grid_forwards": grid["optimizer_steps"] + grid["forwards_eval"],
        "forwards_fraction": forwards / (grid["optimizer_steps"] + grid["forwards_eval"]),
        # Compute in forward-equivalents: a backward costs two forwards, so a training step
        # (forward and backward) three. The grid's steps are training steps; its evaluations
        # forwards.
        "backwards": backwards,
        "compute": forwards + 2 * backwards,
        "grid_compute": 3 * grid["optimizer_steps"] + grid["forwards_eval"],
        "compute_fraction": (forwards + 2 * backwards)
        / (3 * grid["optimizer_steps"] + grid["forwards_eval"]),
        "rates": per_rate,
    }
    return out


def main() -> None:
    """Analyze, write summary_run<N>.json, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "folder", type=Path, nargs="?", default=Path("bench/science/results/trajectory")
    )
    parser.add_argument("--run", default="6", help="reads service_run<N>.json")
    args = parser.parse_args()
    result = analyze(args.folder, args.run)
    (args.folder / f"summary_run{args.run}.json").write_text(json.dumps(result, indent=1) + "\n")
    print("| lr | truly flat | first step | trajectory answer | its drift | hit |")
    for key, row in result["rates"].items():
        drift = row["answer_drift"]
        print(
            f"| {float(key):g} | {row['truly_flat']} | {row['first_step_answer']} | "
            f"{row['trajectory_answer']} | {'-' if drift is None else f'{drift:+.3f}'} | "
            f"{row['hit']} |"
        )
    print(f"hits {result['hits']} of {result['rates_scored']}")
    print(f"Spearman forecast vs observed: {result['spearman_forecast_vs_observed']}")
    print(f"cost: {json.dumps(result['cost'])}")


if __name__ == "__main__":
    main()
