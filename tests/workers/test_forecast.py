"""The drift forecast (workers/forecast.py) against closed forms."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from contract.spec import SweepSpec
from workers.forecast import burn_in, cumulative_lr, forecast_drift


@dataclass(frozen=True)
class Point:
    step: int
    eval_set: str
    role: str
    drift: float


def _spec(**overrides: object) -> SweepSpec:
    body: dict[str, object] = {
        "model": {"path": "m"},
        "pretraining": {"name": "general", "path": "a"},
        "finetuning": [{"name": "math", "path": "b"}],
        "ratios": [0.5],
        "learning_rate": 1e-4,
        "planned_steps": 300,
        "trajectory": {"steps": 100, "measure_every": 10},
    }
    body.update(overrides)
    return SweepSpec.model_validate(body)


def test_cumulative_lr_of_a_constant_and_a_warmed_up_schedule() -> None:
    assert cumulative_lr(_spec(), 50) == pytest.approx(50 * 1e-4)
    warm = _spec(schedule={"kind": "cosine", "warmup_steps": 9, "min_lr_ratio": 0.1})
    assert cumulative_lr(warm, 10) == pytest.approx(1e-4 * sum(range(1, 11)) / 10)
    assert warm.lr_at(299) == pytest.approx(1e-5, rel=1e-3)


@pytest.mark.parametrize("exponent", [0.5, 1.0])
def test_a_power_law_in_steps_is_recovered_under_a_constant_rate(exponent: float) -> None:
    spec = _spec()
    points = [
        Point(s, "general", "pretraining", 0.01 * (s / 100) ** exponent) for s in range(0, 101, 10)
    ]
    (forecast,) = forecast_drift(spec, points)
    truth = 0.01 * 3.0**exponent
    assert forecast.drift == pytest.approx(truth, rel=1e-6)
    assert forecast.low <= truth <= forecast.high
    assert not forecast.measured
    assert "least squares over the 8 points after step 25" in forecast.method


def test_the_early_jump_is_left_out_of_the_trend() -> None:
    spec = _spec()
    # A jump of 0.05 by step 10, then a fall of 0.01 per 100 steps: 0.03 at step 300.
    drift = {0: 0.0, 10: 0.05}
    drift.update({s: 0.05 - 1e-4 * (s - 10) for s in range(20, 101, 10)})
    points = [Point(s, "general", "pretraining", d) for s, d in drift.items()]
    (forecast,) = forecast_drift(spec, points)
    assert forecast.drift == pytest.approx(0.05 - 1e-4 * 290, abs=1e-9)
    assert forecast.low <= 0.021 <= forecast.high


def test_a_stopped_trajectory_keeps_the_planned_burn_in() -> None:
    # Pruned at step 50 of 100: the fit reads steps 30-50, the window pruning read (after step
    # 25), not steps 20-50 (after a quarter of 50), so the early jump at step 20 stays out.
    spec = _spec()
    drift = {0: 0.0, 10: 0.02, 20: 0.09, 30: 0.03, 40: 0.04, 50: 0.05}
    points = [Point(s, "general", "pretraining", d) for s, d in drift.items()]
    (forecast,) = forecast_drift(spec, points)
    assert "the 3 points after step 25" in forecast.method
    assert burn_in(spec, 50) == 25 and burn_in(spec, 100) == 25
    assert burn_in(spec, 20) == 5  # shorter than the burn-in: a quarter of what was measured


def test_noise_widens_the_interval_around_the_truth() -> None:
    spec = _spec()
    wiggle = [0.0, 0.002, -0.002, 0.001, -0.001, 0.002, -0.002, 0.001, -0.001, 0.0]
    points = [
        Point(s, "general", "pretraining", 0.02 * math.sqrt(s / 100) + w)
        for s, w in zip(range(10, 101, 10), wiggle, strict=True)
    ]
    (forecast,) = forecast_drift(spec, points)
    truth = 0.02 * math.sqrt(3.0)
    assert forecast.low < truth < forecast.high
    assert forecast.high - forecast.low > 0.004


def test_a_decaying_schedule_forecasts_less_than_a_constant_one() -> None:
    points = [Point(s, "general", "pretraining", 1e-4 * s) for s in range(0, 101, 10)]
    constant = forecast_drift(_spec(), points)[0]
    # Same measured points, but the planned run decays: the rest of the run moves less far.
    cosine = forecast_drift(_spec(schedule={"kind": "cosine"}), points)[0]
    assert cosine.drift < constant.drift


def test_a_measured_step_is_the_forecast() -> None:
    spec = _spec(planned_steps=50)
    points = [Point(s, "math", "finetuning", -0.01 * s) for s in range(0, 51, 10)]
    (forecast,) = forecast_drift(spec, points)
    assert forecast.measured and forecast.drift == forecast.low == forecast.high == -0.5


def test_a_rising_drift_may_accelerate() -> None:
    spec = _spec()
    points = [
        Point(s, "general", "pretraining", 0.01 * (s / 100) ** 1.5) for s in range(0, 101, 10)
    ]
    (forecast,) = forecast_drift(spec, points)
    assert forecast.drift == pytest.approx(0.01 * 3.0**1.5, rel=1e-6)
    assert "left out" not in forecast.method


def test_a_falling_drift_is_not_extrapolated_faster_than_linearly() -> None:
    # A recovery that happens to follow an accelerating law over the trajectory: the forecast
    # uses exponents up to 1 only, so it lies at or above the linear extrapolation.
    spec = _spec()
    points = [
        Point(s, "general", "pretraining", 0.05 - 0.02 * (s / 100) ** 1.5)
        for s in range(0, 101, 10)
    ]
    (forecast,) = forecast_drift(spec, points)
    accelerating = 0.05 - 0.02 * 3.0**1.5
    assert forecast.drift > accelerating + 0.02
    assert "exponents above 1 are left out" in forecast.method
    assert "^1.5" not in forecast.method and "^1.25" not in forecast.method


def test_run_8s_easing_mix_is_not_forecast_below_zero() -> None:
    # docs/evidence.md, run 8: lr 1e-3, ratio 0.5, the grid's held-out documents. The drift eased
    # from +0.17 to +0.12 over steps 20-100; the grid measured +0.102 at step 300. With
    # accelerating exponents the forecast was -0.087.
    spec = _spec(learning_rate=1e-3)
    measured = [0.0, 0.146, 0.1736, 0.158, 0.1607, 0.1446, 0.1428, 0.1487, 0.1436, 0.1215, 0.1157]
    points = [Point(10 * i, "general", "pretraining", d) for i, d in enumerate(measured)]
    (forecast,) = forecast_drift(spec, points)
    assert forecast.drift > 0.0
    assert forecast.low <= 0.102 <= forecast.high
