"""The drift of each evaluation set at the planned run's length, from a trajectory's points.

A trajectory runs K steps; the user plans N. Where N <= K the trajectory measured step N and
that is the answer. Beyond K the drift is extrapolated along the *schedule*, not the step count:
method.md §8 found drift growing sub-linearly, roughly like the loss along the update direction
at an effective distance, so the clock is the cumulative learning rate
``S(t) = sum_{s < t} lr_s`` of the planned schedule (a decaying schedule adds less distance per
step at the end). The model is

    drift(t) = b * (S(t) / S(T)) ** p,      T = last measured step,

with ``p`` from a grid between 1/4 (fast saturation) and 1 (linear in distance) and ``b`` by least
squares through the origin (drift(0) = 0 by definition). The interval spans the forecasts of every
exponent that fits about as well as the best (residual sum of squares within a factor set by the
number of points) and two standard errors of the best fit's forecast (its slope's error and the
measurement noise the residuals show).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from service.spec import SweepSpec

EXPONENTS = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


class DriftPoint(Protocol):
    """What a forecast reads of a trajectory point (a runner's point or a database row)."""

    @property
    def step(self) -> int: ...
    @property
    def eval_set(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def drift(self) -> float: ...


@dataclass(frozen=True)
class Forecast:
    """The forecast drift of one evaluation set after ``steps`` optimizer steps.

    Attributes:
        drift: The point forecast (nats; positive: the loss rises).
        low, high: Its interval.
        measured: True when the trajectory reached ``steps`` (then low == high == drift).
        method: How it was obtained, in words.
    """

    eval_set: str
    role: str
    steps: int
    drift: float
    low: float
    high: float
    measured: bool
    method: str


def cumulative_lr(spec: SweepSpec, steps: int) -> float:
    """``S(steps)``: the sum of the planned schedule's rates over the first ``steps`` steps."""
    return math.fsum(spec.lr_at(s) for s in range(steps))


def forecast_drift(spec: SweepSpec, points: Iterable[DriftPoint]) -> list[Forecast]:
    """Forecast every evaluation set's drift at ``spec.planned_steps``.

    Args:
        spec: The sweep (planned steps and schedule).
        points: A trajectory's points, any order; several evaluation sets.

    Returns:
        One forecast per evaluation set that has points, in the spec's order.
    """
    by_set: dict[str, list[DriftPoint]] = defaultdict(list)
    for p in points:
        by_set[p.eval_set].append(p)
    out = []
    for ref in spec.eval_sets():
        series = sorted(by_set.get(ref.name, []), key=lambda p: p.step)
        if series:
            out.append(_one(spec, ref.name, series[0].role, series))
    return out


def _one(spec: SweepSpec, name: str, role: str, series: Sequence[DriftPoint]) -> Forecast:
    target = spec.planned_steps
    at_target = [p for p in series if p.step == target]
    if at_target:
        d = at_target[-1].drift
        return Forecast(name, role, target, d, d, d, True, f"measured at step {target}")
    fitted = [(p.step, p.drift) for p in series if p.step > 0]
    last = max((s for s, _ in fitted), default=0)
    if not fitted or last > target:
        # Nothing after step 0 (a trajectory pruned at once), or points only beyond N while N
        # itself was not measured: no honest forecast from this series.
        d = series[-1].drift
        return Forecast(
            name, role, target, d, -math.inf, math.inf, False, "too few points to forecast"
        )
    scale = cumulative_lr(spec, last)
    xs = [cumulative_lr(spec, s) / scale for s, _ in fitted]
    ys = [d for _, d in fitted]
    x_target = cumulative_lr(spec, target) / scale
    fits = [_fit(xs, ys, p) for p in EXPONENTS]
    best = min(fits, key=lambda f: f.sse)
    n = len(xs)
    dof = max(n - 2, 1)
    # Exponents whose fit is within the noise of the best one's (an F-like allowance).
    allowance = best.sse * (1.0 + 4.0 / dof) + 1e-18
    plausible = [f for f in fits if f.sse <= allowance] if n >= 3 else fits
    sigma = math.sqrt(best.sse / dof) if n >= 3 else abs(best.slope) * 0.25
    u_target = x_target**best.exponent
    slope_se = sigma / math.sqrt(best.suu) if best.suu > 0 else math.inf
    se = math.hypot(u_target * slope_se, sigma)
    forecasts = [f.slope * x_target**f.exponent for f in plausible]
    point = best.slope * u_target
    low = min(forecasts) - 2.0 * se
    high = max(forecasts) + 2.0 * se
    method = (
        f"drift = {best.slope:.3g} x (S/S_{last})^{best.exponent:g} in the cumulative planned "
        f"learning rate S, least squares over {n} points (steps {fitted[0][0]}-{last}); interval: "
        f"exponents {min(f.exponent for f in plausible):g}-{max(f.exponent for f in plausible):g} "
        f"that fit within the noise, +-2 standard errors"
    )
    return Forecast(name, role, target, point, low, high, False, method)


@dataclass(frozen=True)
class _Fit:
    exponent: float
    slope: float
    sse: float
    suu: float


def _fit(xs: Sequence[float], ys: Sequence[float], exponent: float) -> _Fit:
    us = [x**exponent for x in xs]
    suu = math.fsum(u * u for u in us)
    slope = math.fsum(u * y for u, y in zip(us, ys, strict=True)) / suu if suu > 0 else 0.0
    sse = math.fsum((y - slope * u) ** 2 for u, y in zip(us, ys, strict=True))
    return _Fit(exponent, slope, sse, suu)


__all__ = ["EXPONENTS", "DriftPoint", "Forecast", "cumulative_lr", "forecast_drift"]
