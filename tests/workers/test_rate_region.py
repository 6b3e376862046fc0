"""The stable region over (ratio, learning rate) on hand-made measurements (issue 11, part 2)."""

from __future__ import annotations

import pytest

from contract.recommendation import TrajectoryVerdict
from contract.spec import SweepSpec
from tests.workers.rows import Row
from workers.rate_region import rate_region
from workers.recommend import recommend

LR = 1e-4
GRID = [3e-5, 1e-4, 3e-4, 1e-3]


def spec(**extra: object) -> SweepSpec:
    return SweepSpec.model_validate(
        {
            "model": {"path": "m"},
            "pretraining": {"name": "pt", "path": "pt"},
            "finetuning": [{"name": "math", "path": "math"}],
            "ratios": [0.0, 0.5, 1.0],
            "learning_rate": LR,
            "learning_rates": [3e-5, 3e-4, 1e-3],
            "seq_len": 128,
            "batch_tokens": 32768,
            "batches": 4,
            **extra,
        }
    )


def rows() -> list[Row]:
    # Lower bounds of eta_c on pt: 5e-5, 5e-4, 2e-3 at ratios 0, 0.5, 1 (math's never binds).
    out = []
    for ratio, low in ((0.0, 5e-5), (0.5, 5e-4), (1.0, 2e-3)):
        # A quadratic loss change along the step: -g lr + c lr^2 with its zero at 2 * low.
        changes = [[lr, -lr + lr * lr / (2 * low)] for lr in GRID]
        out.append(
            Row(ratio, "pt", "pretraining", low * 1.25, low, None, rate_loss_changes=changes)
        )
        out.append(Row(ratio, "math", "finetuning", 1.0, 0.9, -0.01))
    return out


def test_first_step_region_is_the_flat_rule_at_each_rate() -> None:
    region = recommend(spec(), rows()).rate_region
    assert region is not None
    assert region.learning_rates == GRID and region.trajectory_rate is None
    stable = {(p.ratio, p.learning_rate): p.stable for p in region.points}
    # Stable exactly where lr < the ratio's lower bound.
    assert stable == {
        (r, lr): lr < low for r, low in ((0.0, 5e-5), (0.5, 5e-4), (1.0, 2e-3)) for lr in GRID
    }
    best = {m.ratio: m.max_stable_lr for m in region.max_rates}
    assert best == {0.0: 3e-5, 0.5: 3e-4, 1.0: 1e-3}
    assert [m.eta_c_bound for m in region.max_rates] == [5e-5, 5e-4, 2e-3]
    assert [b.ratio for b in region.best_by_rate] == [0.0, 0.5, 0.5, 1.0]
    # The best ratio at the planned rate is the recommendation's.
    assert region.best_ratio_at_planned == 0.5 == recommend(spec(), rows()).ratio
    # The measured loss change at each rate is carried through.
    point = next(p for p in region.points if p.ratio == 0.0 and p.learning_rate == 1e-3)
    assert point.pretraining_loss_change == pytest.approx(-1e-3 + 1e-6 / 1e-4)
    assert all(p.basis == "first_step" for p in region.points)


def test_no_grid_no_region_and_rows_without_changes() -> None:
    plain = spec(learning_rates=None)
    assert recommend(plain, rows()).rate_region is None
    for row in (old := rows()):
        row.rate_loss_changes = None
    region = recommend(spec(), old).rate_region
    assert region is not None and all(p.pretraining_loss_change is None for p in region.points)


def verdict(ratio: float, within: bool) -> TrajectoryVerdict:
    return TrajectoryVerdict(
        ratio=ratio,
        steps_done=10,
        pruned=False,
        retention_drift=0.0 if within else 1.0,
        retention_drift_high=0.0 if within else 1.0,
        finetuning_gain=0.1,
        within_tolerance=within,
    )


def test_a_trajectory_decides_its_ratio_at_the_planned_rate_and_bounds_the_others() -> None:
    # Ratio 0.5 looks flat at the first step up to 5e-4, but its trajectory drifts beyond the
    # tolerance at the planned rate: unstable there and at every higher rate.
    # Ratio 0.0 leaves the basin at the first step at 1e-4, but its trajectory stays within:
    # stable at the planned rate and below it.
    s = spec(trajectory={"steps": 10, "measure_every": 5})
    region = rate_region(s, rows(), [verdict(0.5, False), verdict(0.0, True)], None)
    assert region is not None and region.trajectory_rate == LR
    by = {(p.ratio, p.learning_rate): p for p in region.points}
    assert not by[(0.5, 1e-4)].stable and by[(0.5, 1e-4)].basis == "trajectory"
    assert not by[(0.5, 3e-4)].stable and by[(0.5, 3e-4)].basis == "trajectory"
    assert by[(0.5, 3e-5)].stable and by[(0.5, 3e-5)].basis == "first_step"
    assert by[(0.0, 1e-4)].stable and by[(0.0, 3e-5)].basis == "trajectory"
    assert not by[(0.0, 3e-4)].stable and by[(0.0, 3e-4)].basis == "first_step"
    # Without a trajectory, ratio 1.0 keeps the first-step answer.
    assert all(by[(1.0, lr)].basis == "first_step" for lr in GRID)
    assert {m.ratio: m.max_stable_lr for m in region.max_rates} == {
        0.0: 1e-4,
        0.5: 3e-5,
        1.0: 1e-3,
    }
