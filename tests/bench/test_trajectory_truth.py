"""The trajectory ground truth's data order, corpus split and analysis rules (bench/science)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from bench.science.analyze_trajectory import (
    _cost,
    forecast_rule,
    grid_table,
    smallest_flat,
)
from bench.science.debian_corpora import Document, excluded, held_out, write_jsonl_gz
from bench.science.replay_answers import replay
from bench.science.trajectory_truth import TruthConfig, cell_rows, read_jsonl_gz

pytestmark = pytest.mark.unit

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "science" / "results" / "trajectory"


def test_cell_rows_take_the_ratio_share_and_walk_one_order_per_seed() -> None:
    cfg = TruthConfig(batch_rows=40, steps=5)
    sizes = (1000, 700)
    a = list(cell_rows(0, 0.25, cfg, sizes))
    b = list(cell_rows(0, 0.05, cfg, sizes))
    assert all(len(g) == 10 and len(f) == 30 for g, f in a)
    assert all(len(g) == 2 and len(f) == 38 for g, f in b)
    # Same seed: the smaller share's general rows are the first rows of the larger one's walk.
    assert torch.equal(torch.cat([g for g, _ in b]), torch.cat([g for g, _ in a])[:10])
    seen = torch.cat([g for g, _ in a])
    assert len(set(seen.tolist())) == len(seen)  # no row twice within an epoch
    other = torch.cat([g for g, _ in cell_rows(1, 0.25, cfg, sizes)])
    assert not torch.equal(seen, other)


def test_cell_rows_wrap_into_a_new_epoch() -> None:
    cfg = TruthConfig(batch_rows=4, steps=3)
    general = torch.cat([g for g, _ in cell_rows(0, 1.0, cfg, (5, 5))]).tolist()
    assert len(general) == 12
    assert sorted(general[:5]) == [0, 1, 2, 3, 4]
    assert general[5:10] == general[:5]  # the second epoch repeats the seeded order


def test_held_out_split_is_by_document_hash_and_stable(tmp_path: Path) -> None:
    docs = [Document("pkg", f"/usr/share/doc/{i}.tex", f"text {i}") for i in range(400)]
    flags = [held_out(d, 0.1) for d in docs]
    assert 20 <= sum(flags) <= 60  # about 10% of 400
    assert flags == [held_out(d, 0.1) for d in docs]
    path = tmp_path / "x.jsonl.gz"
    digest = write_jsonl_gz(path, docs[:3])
    assert digest == write_jsonl_gz(tmp_path / "y.jsonl.gz", docs[:3])  # reproducible bytes
    assert read_jsonl_gz(path, None) == ["text 0", "text 1", "text 2"]
    assert read_jsonl_gz(path, 2) == ["text 0", "text 1"]
    with gzip.open(path, "rt") as handle:
        assert json.loads(handle.readline())["source"] == "pkg:/usr/share/doc/0.tex"


def test_reserved_documentation_is_excluded() -> None:
    assert excluded("/usr/share/doc/linux-doc/Documentation/x.txt")
    assert excluded("/usr/share/doc/python3.11/html/index.html")
    assert not excluded("/usr/share/doc/texlive-doc/latex/amsmath/amsldoc.tex.gz")


def _grid() -> dict[str, object]:
    cells = []
    # Drift at step 300 falls with the ratio; seeds differ by +-0.002.
    for seed, sign in ((0, 1), (1, -1)):
        for ratio, drift in ((0.0, 0.10), (0.1, 0.03), (0.25, 0.01), (0.5, -0.02)):
            d = drift + sign * 0.002
            cells.append(
                {
                    "seed": seed,
                    "ratio": ratio,
                    "lr": 1e-4,
                    "drift": {"300": {"general": d, "latex": -0.5}},
                }
            )
    return {"cells": cells}


def test_grid_table_and_smallest_flat_ratio() -> None:
    table = grid_table(_grid())
    assert table[(0.1, 1e-4)]["by_step"][300]["general"] == pytest.approx(0.03)
    assert table[(0.1, 1e-4)]["by_step"][300]["general_std"] == pytest.approx(0.002 * 2**0.5)
    ratios = [0.0, 0.1, 0.25, 0.5]
    assert smallest_flat(table, ratios, 1e-4, 300, 0.02) == {"smallest": 0.25, "upward": 0.25}
    assert smallest_flat(table, ratios, 1e-4, 300, 0.001) == {"smallest": 0.5, "upward": 0.5}
    assert smallest_flat(table, ratios, 1e-4, 300, -1.0) == {"smallest": None, "upward": None}


def test_forecast_rule_needs_every_retention_set_within_tolerance() -> None:
    def traj(ratio: float, pt: float, held: float, ft: float) -> dict[str, object]:
        return {
            "ratio": ratio,
            "forecast": [
                {"eval_set": "general", "role": "pretraining", "drift": pt},
                {"eval_set": "latex", "role": "finetuning", "drift": ft},
                {"eval_set": "general_heldout", "role": "retention", "drift": held},
            ],
        }

    entry = {
        "trajectories": [
            traj(0.0, 0.01, 0.05, -1.0),  # held-out set above tolerance
            traj(0.1, 0.015, 0.019, 5.0),  # a fine-tuning rise does not count
            traj(0.25, 0.0, 0.0, -1.0),
        ]
    }
    assert forecast_rule(entry, 0.02) == 0.1
    assert forecast_rule(entry, 0.001) == 0.25
    assert forecast_rule(entry, -1.0) is None


def test_cost_counts_steps_and_forwards_against_the_grid() -> None:
    cfg = {
        "seeds": [0, 1],
        "steps": 300,
        "eval_steps": [10, 300],
        "eval_rows": 80,
        "batch_rows": 40,
    }
    svc = {
        "prepare": {"forwards": 10, "backwards": 16, "seconds": 1.0},
        "screen": [{"forwards": 50}, {"forwards": 50}],
        "screen_seconds": 2.0,
        "trajectory_seconds": 3.0,
        "trajectories": [
            {"steps_done": 100, "forwards": 400, "backwards": 100},
            {"steps_done": 40, "forwards": 200, "backwards": 40},
        ],
    }
    cost = _cost(svc, cfg, n_ratios=2)
    assert cost["grid"]["optimizer_steps"] == 2 * 2 * 300
    # Evaluations: 3 points x 2 sets x 80 rows / 40 rows per batch, per cell.
    assert cost["grid"]["forwards"] == pytest.approx(1200 + 4 * 3 * 2 * 2)
    assert cost["sweep"]["optimizer_steps"] == 140
    assert cost["steps_fraction"] == pytest.approx(140 / 1200)
    assert cost["sweep"]["forwards"] == 10 + 100 + 600


def _spec_json() -> dict[str, object]:
    from contract.spec import (
        DataRef,
        FinetuneRef,
        ModelRef,
        PretrainingRef,
        SweepSpec,
        TrajectorySpec,
    )

    spec = SweepSpec(
        model=ModelRef(path="m"),
        pretraining=PretrainingRef(name="general", path="g.jsonl"),
        finetuning=[FinetuneRef(name="latex", path="l.jsonl")],
        retention=[DataRef(name="grid_heldout", path="h.jsonl")],
        ratios=[0.0, 0.5],
        learning_rate=1e-4,
        seq_len=8,
        batch_tokens=16,
        planned_steps=300,
        trajectory=TrajectorySpec(steps=100, measure_every=20),
    )
    return spec.model_dump(mode="json")


def _points(pt: list[float], held: list[float]) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for k, (a, b) in enumerate(zip(pt, held, strict=True)):
        for name, role, d in (("general", "pretraining", a), ("grid_heldout", "retention", b)):
            out.append(
                {
                    "step": 20 * k,
                    "lr": 1e-4,
                    "eval_set": name,
                    "role": role,
                    "status": "ok",
                    "loss": 3.0 + d,
                    "drift": d,
                    "eta_c": None,
                    "eta_c_low": None,
                    "eta_c_high": None,
                    "loss_change": None,
                    "forwards": 1,
                }
            )
    return out


def test_replay_prunes_on_the_pretraining_rows_unless_only_held_out_sets_count() -> None:
    from bench.science.analyze_trajectory import replay

    rising = [0.0, 0.03, 0.04, 0.05, 0.06, 0.07]  # training rows: above 0.02 and rising
    flat = [0.0, 0.004, 0.002, 0.001, 0.0, -0.001]  # held-out rows: flat
    entry = {
        "spec": _spec_json(),
        "trajectories": [{"ratio": 0.5, "points": _points(rising, flat)}],
    }
    grid = {
        "cells": [
            {"seed": 0, "ratio": 0.5, "lr": 1e-4, "drift": {"300": {"general": 0.0, "latex": -1.0}}}
        ]
    }
    table = grid_table(grid)
    truth = {"smallest": 0.5, "upward": 0.5}
    as_is = replay(entry, 0.02, table, [0.5], 1e-4, 300, truth)
    # Measurements after the burn-in (a quarter of K = 100) count: 40, 60 and 80.
    assert as_is["per_ratio"]["0.5"]["pruned_at"] == 80
    assert as_is["answer"]["ratio"] is None
    held = replay(entry, 0.02, table, [0.5], 1e-4, 300, truth, heldout_only=True)
    assert held["per_ratio"]["0.5"]["pruned_at"] is None
    assert held["heldout_point_rule"]["ratio"] == 0.5


def test_replay_of_run_8_answers_by_the_point_forecast_and_cautiously_by_the_interval() -> None:
    # docs/evidence.md, run 8: the recorded trajectories read again by today's rules.
    recorded = json.loads((RESULTS / "service_run8.json").read_text())
    answers = {
        accept: {
            key: entry["trajectory"]["ratio"]
            for key, entry in replay(recorded, accept=accept)["rates"].items()
        }
        for accept in ("forecast", "interval")
    }
    assert answers["forecast"] == {"3e-05": 0.35, "0.0001": 0.5, "0.0003": 0.5, "0.001": None}
    assert answers["interval"] == {"3e-05": 0.5, "0.0001": 0.5, "0.0003": None, "0.001": None}
    as_run = {key: entry["trajectory"]["ratio"] for key, entry in recorded["rates"].items()}
    assert as_run == answers["interval"]  # the rule run 8 ran under
