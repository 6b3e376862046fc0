"""Ratio x learning rate (issue 11, part 2): a grid of rates beside the mix, and its answer.

eta_c is measured per ratio whatever the planned rate, so one static sweep answers for a whole
grid of rates: at each rate the first-step flat rule (the rate below the lower bound of eta_c on
the pre-training and every retention set) and the one-step loss change (one extra forward per
rate and evaluation batch). Trajectories run at the planned ``learning_rate`` only; where a ratio
has one, its verdict decides that ratio at the planned rate and bounds it at the others (see
``workers/rate_region.py``).

Plain pydantic models: the spec's :class:`LearningRateRange`, and the recommendation's
:class:`RateRegion`.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# How close two rates may be and still count as one (relative): a grid point at the planned
# rate up to float rounding is the planned rate.
SAME_RATE = 1e-9


class LearningRateRange(BaseModel):
    """A log-spaced grid of learning rates from ``low`` to ``high``, both included."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    low: float = Field(gt=0.0, allow_inf_nan=False, description="Smallest rate of the grid.")
    high: float = Field(gt=0.0, allow_inf_nan=False, description="Largest rate of the grid.")
    points: int = Field(
        ge=2, le=1000, description="How many rates, evenly spaced in log(rate), ends included."
    )

    @model_validator(mode="after")
    def _ordered(self) -> LearningRateRange:
        if not self.low < self.high:
            raise ValueError("'low' must be below 'high'")
        return self

    def grid(self) -> list[float]:
        """The rates, ascending."""
        step = (math.log(self.high) - math.log(self.low)) / (self.points - 1)
        inner = [math.exp(math.log(self.low) + i * step) for i in range(1, self.points - 1)]
        return [self.low, *inner, self.high]


def same_rate(a: float, b: float) -> bool:
    """Whether two rates are one grid point (equal up to float rounding)."""
    return math.isclose(a, b, rel_tol=SAME_RATE)


def with_planned(rates: list[float], planned: float) -> list[float]:
    """``rates`` ascending with the planned rate in its place (added when it is not there)."""
    if any(same_rate(r, planned) for r in rates):
        return [planned if same_rate(r, planned) else r for r in rates]
    return sorted([*rates, planned])


def check_rate_list(rates: list[float]) -> None:
    """Refuse a rate list that is not strictly ascending (which also refuses a repeat).

    Raises:
        ValueError: naming the first pair out of order.
    """
    for i in range(1, len(rates)):
        if not rates[i - 1] < rates[i]:
            raise ValueError(
                f"'learning_rates' must be strictly ascending; item {i} ({rates[i]:g}) is not "
                f"above item {i - 1} ({rates[i - 1]:g}): sort them and list each once"
            )


class RatePoint(BaseModel):
    """One (ratio, learning rate) of the grid and whether it stays within the tolerance."""

    ratio: float = Field(description="Fraction of pre-training tokens in the mix.")
    learning_rate: float = Field(description="The (peak) learning rate of this point.")
    stable: bool = Field(
        description="Within the tolerance at this rate: by the ratio's trajectory where the "
        "basis is 'trajectory', else the first-step flat rule (the rate below the lower bound of "
        "eta_c on the pre-training and every retention set)."
    )
    basis: Literal["first_step", "trajectory"] = Field(
        description="first_step: eta_c at theta0; trajectory: the ratio's trajectory at the "
        "planned rate (its verdict there, and its bound at the other rates, see the README)."
    )
    pretraining_loss_change: float | None = Field(
        description="Predicted one-step change of the pre-training loss at this rate (None: not "
        "measured, e.g. a sweep recorded before the grid)."
    )


class RatioMaxRate(BaseModel):
    """The largest rate of the grid at which one ratio stays within the tolerance."""

    ratio: float = Field(description="Fraction of pre-training tokens in the mix.")
    max_stable_lr: float | None = Field(
        description="Largest grid rate with 'stable' true for this ratio (None: none is)."
    )
    eta_c_bound: float | None = Field(
        description="The first-step bound itself, off the grid: the smallest lower bound of "
        "eta_c over the pre-training and retention sets (every rate below it is flat at the "
        "first step)."
    )


class RateBest(BaseModel):
    """The smallest stable ratio at one rate of the grid (the flat rule's answer there)."""

    learning_rate: float = Field(description="A rate of the grid.")
    ratio: float | None = Field(description="Smallest stable ratio at this rate (None: none).")


class RateRegion(BaseModel):
    """The stable region of a sweep over (ratio, learning rate)."""

    learning_rates: list[float] = Field(
        description="The grid, ascending, the planned learning_rate included."
    )
    planned_learning_rate: float = Field(description="The spec's planned 'learning_rate'.")
    points: list[RatePoint] = Field(description="Every (ratio, rate), by ratio then rate.")
    max_rates: list[RatioMaxRate] = Field(description="Per ratio, the largest stable rate.")
    best_by_rate: list[RateBest] = Field(description="Per rate, the smallest stable ratio.")
    best_ratio_at_planned: float | None = Field(
        description="The recommended ratio at the planned rate (the recommendation's 'ratio')."
    )
    trajectory_rate: float | None = Field(
        description="The rate trajectories ran at (the planned one), or None without trajectories."
    )


__all__ = [
    "LearningRateRange",
    "RateBest",
    "RatePoint",
    "RateRegion",
    "RatioMaxRate",
    "check_rate_list",
    "same_rate",
    "with_planned",
]
