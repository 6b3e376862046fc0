"""The rate grid beside the mix (issue 11, part 2): validation, the grid, and its limit."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from contract.errors import LimitError
from contract.rates import LearningRateRange
from contract.spec import Limits, SweepSpec, check_limits

BASE: dict[str, object] = {
    "model": {"path": "m"},
    "pretraining": {"name": "pt", "path": "pt"},
    "finetuning": [{"name": "math", "path": "math"}],
    "ratios": [0.0, 0.5, 1.0],
    "learning_rate": 1e-4,
    "seq_len": 128,
    "batch_tokens": 1024,
}


def make(**extra: object) -> SweepSpec:
    return SweepSpec.model_validate({**BASE, **extra})


def test_no_grid_means_what_it_meant() -> None:
    spec = make()
    assert spec.rate_grid is None
    # The canonical JSON (idempotency) is the same as before the fields existed.
    assert "learning_rates" not in spec.canonical_json()
    assert "warm_start_from" not in spec.canonical_json()


def test_the_planned_rate_is_added_in_its_place() -> None:
    assert make(learning_rates=[3e-5, 3e-4]).rate_grid == [3e-5, 1e-4, 3e-4]
    # Listed already (up to rounding): kept once, as the planned value itself.
    assert make(learning_rates=[1e-4 * (1 + 1e-12), 3e-4]).rate_grid == [1e-4, 3e-4]
    assert "learning_rates" in make(learning_rates=[3e-4]).canonical_json()


def test_a_range_is_log_spaced_ends_included() -> None:
    grid = LearningRateRange(low=1e-5, high=1e-3, points=3).grid()
    assert grid[0] == 1e-5 and grid[-1] == 1e-3
    assert math.isclose(grid[1], 1e-4, rel_tol=1e-12)
    spec = make(learning_rate=2e-4, learning_rate_range={"low": 1e-5, "high": 1e-3, "points": 3})
    assert spec.rate_grid is not None and len(spec.rate_grid) == 4 and 2e-4 in spec.rate_grid


@pytest.mark.parametrize(
    ("extra", "where", "message"),
    [
        ({"learning_rates": [3e-4, 1e-5]}, "learning_rates", "strictly ascending"),
        ({"learning_rates": [1e-5, 1e-5]}, "learning_rates", "strictly ascending"),
        ({"learning_rates": [0.0, 1e-5]}, "learning_rates", "greater than 0"),
        ({"learning_rates": [-1e-5]}, "learning_rates", "greater than 0"),
        ({"learning_rates": []}, "learning_rates", "at least 1"),
        (
            {"learning_rate_range": {"low": 1e-3, "high": 1e-5, "points": 3}},
            "learning_rate_range",
            "'low' must be below",
        ),
        ({"warm_start_from": "not-an-id"}, "warm_start_from", "pattern"),
    ],
)
def test_bad_grids_name_the_field(extra: dict[str, object], where: str, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        make(**extra)
    error = info.value.errors()[0]
    assert error["loc"][0] == where
    assert message in error["msg"]


def test_a_list_and_a_range_together_are_refused() -> None:
    with pytest.raises(ValidationError, match="at most one of 'learning_rates'"):
        make(learning_rates=[1e-5], learning_rate_range={"low": 1e-5, "high": 1e-3, "points": 3})


def test_the_grid_is_bounded_by_the_limits() -> None:
    limits = Limits(
        max_batches=64,
        max_batch_tokens=1 << 20,
        max_seq_len=4096,
        max_ratios=64,
        max_trajectory_steps=5000,
        max_trials=128,
        max_eval_sets=16,
        max_learning_rates=3,
    )
    check_limits(make(learning_rates=[1e-5, 3e-4]), limits)  # 3 with the planned rate
    with pytest.raises(LimitError) as info:
        check_limits(make(learning_rates=[1e-5, 3e-5, 3e-4]), limits)
    assert info.value.field == "learning_rates" and "SHARPMIX_MAX_LEARNING_RATES" in str(info.value)
    with pytest.raises(LimitError) as info:
        check_limits(make(learning_rate_range={"low": 1e-5, "high": 1e-3, "points": 4}), limits)
    assert info.value.field == "learning_rate_range.points"
