"""The drift of each evaluation set at the planned run's length, from a trajectory's points.

A trajectory runs K steps; the user plans N. Where N <= K the trajectory measured step N and
that is the answer. Beyond K the drift is extrapolated along the *schedule*, not the step count:
the clock is the cumulative learning rate ``S(t) = sum_{s < t} lr_s`` of the planned schedule (a
decaying schedule adds less distance per step at the end).

Real text (docs/evidence.md) shows two phases: a jump within the first tens of steps of a fresh
AdamW run (the loss of the pre-training text rises at once, by more at higher rates and lower
ratios), then a slow trend that keeps rising for a mix with too little pre-training data and
comes back down for one with enough. The jump says little about step N, so the fit uses the
points after a burn-in (the last three quarters of the trajectory) and carries an intercept:

    drift(t) = a + b * (S(t) / S(T)) ** p,      T = last measured step,

with ``p`` from a grid between 1/4 (saturating) and 3/2 (accelerating) and ``a, b`` by least
squares. A *falling* drift (the best fit's ``b < 0``) is a recovery towards the pre-trained loss,
which is bounded: it is fitted with ``p <= 1`` only, so a recovery is never extrapolated faster
than linearly in ``S`` (run 8 in docs/evidence.md: with ``p = 3/2`` a mix whose drift eased from
+0.17 to +0.12 over steps 20-100 was forecast at -0.09 for step 300, where the grid measured
+0.10). A rising drift keeps every exponent: harm is extrapolated generously. The interval
spans the forecasts of every exponent that fits about as well as the best (residual sum of
squares within a factor set by the number of points) and two standard errors of the best fit's
forecast (its coefficients' errors and the measurement noise the residuals show). With fewer
than four points after the burn-in, every exponent counts and the noise is taken as a quarter of
the trend.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from contract.spec import SweepSpec

EXPONENTS = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0, 1.25, 1.5)
RECOVERY_MAX_EXPONENT = 1.0  # a falling drift is not extrapolated faster than linearly in S


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


def burn_in(spec: SweepSpec, last: int) -> int:
    """Steps at the start of a trajectory that neither the forecast nor pruning read.

    A quarter of the planned trajectory (``min(K, N) // 4``): the early jump of the pre-training
    loss says little about step N (docs/evidence.md, section 5). A trajectory stopped before its
    K steps keeps the same window as pruning saw; one too short for it (``last`` at or below it)
    falls back to a quarter of what was measured.
    """
    planned = min(spec.trajectory.steps, spec.planned_steps) if spec.trajectory else last
    burn = planned // 4
    return burn if burn < last else last // 4


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
    last = max(p.step for p in series)
    if last == 0 or last > target:
        # Nothing after step 0 (a trajectory stopped at once), or points only beyond N while N
        # itself was not measured: no honest forecast from this series.
        d = series[-1].drift
        return Forecast(
            name, role, target, d, -math.inf, math.inf, False, "too few points to forecast"
        )
    burn = burn_in(spec, last)
    tail = [(p.step, p.drift) for p in series if p.step > burn]
    # The schedule's rates once, up to N: every S(t) below is a sum over a prefix of them.
    rates = [spec.lr_at(step) for step in range(target)]
    scale = math.fsum(rates[:last])
    xs = [math.fsum(rates[:s]) / scale for s, _ in tail]
    ys = [d for _, d in tail]
    x_target = math.fsum(rates) / scale
    fits = [_fit(xs, ys, p) for p in EXPONENTS]
    best = min(fits, key=lambda f: f.sse)
    falling = best.slope < 0
    if falling:
        fits = [f for f in fits if f.exponent <= RECOVERY_MAX_EXPONENT]
        best = min(fits, key=lambda f: f.sse)
    n = len(xs)
    enough = n >= 4
    dof = max(n - 3, 1)  # intercept, slope and exponent
    # Exponents whose fit is within the noise of the best one's (an F-like allowance).
    allowance = best.sse * (1.0 + 4.0 / dof) + 1e-18
    plausible = [f for f in fits if f.sse <= allowance] if enough else fits
    u_target = x_target**best.exponent
    point = best.at(u_target)
    if enough:
        sigma = math.sqrt(best.sse / dof)
        se = sigma * math.sqrt(1.0 + best.leverage(u_target))
    else:
        se = 0.25 * abs(point - (ys[0] if ys else 0.0)) + 0.25 * abs(best.slope)
    forecasts = [f.at(x_target**f.exponent) for f in plausible]
    low = min(forecasts) - 2.0 * se
    high = max(forecasts) + 2.0 * se
    exponents = sorted(f.exponent for f in plausible)
    method = (
        f"drift = {best.intercept:+.3g} {best.slope:+.3g} x (S/S_{last})^{best.exponent:g} in the "
        f"cumulative planned learning rate S, least squares over the {n} points after step "
        f"{burn} (steps {tail[0][0]}-{last}); interval: exponents {exponents[0]:g}-"
        f"{exponents[-1]:g} that fit within the noise, +-2 standard errors"
        + (
            f"; falling, so exponents above {RECOVERY_MAX_EXPONENT:g} are left out"
            if falling
            else ""
        )
    )
    return Forecast(name, role, target, point, low, high, False, method)


@dataclass(frozen=True)
class _Fit:
    """``y = intercept + slope * u`` with ``u = x ** exponent``, and what its errors need."""

    exponent: float
    intercept: float
    slope: float
    sse: float
    n: int
    mean_u: float
    suu: float  # sum of (u - mean u)^2

    def at(self, u: float) -> float:
        return self.intercept + self.slope * u

    def leverage(self, u: float) -> float:
        """``x0 (X^T X)^-1 x0^T`` for the point ``u``: the fit's own variance over sigma^2."""
        if self.suu <= 0:
            return math.inf
        return 1.0 / self.n + (u - self.mean_u) ** 2 / self.suu


def _fit(xs: Sequence[float], ys: Sequence[float], exponent: float) -> _Fit:
    us = [x**exponent for x in xs]
    n = len(us)
    mean_u = math.fsum(us) / n
    mean_y = math.fsum(ys) / n
    suu = math.fsum((u - mean_u) ** 2 for u in us)
    suy = math.fsum((u - mean_u) * (y - mean_y) for u, y in zip(us, ys, strict=True))
    slope = suy / suu if suu > 0 else 0.0
    intercept = mean_y - slope * mean_u
    sse = math.fsum((y - intercept - slope * u) ** 2 for u, y in zip(us, ys, strict=True))
    return _Fit(exponent, intercept, slope, sse, n, mean_u, suu)


__all__ = [
    "EXPONENTS",
    "RECOVERY_MAX_EXPONENT",
    "DriftPoint",
    "Forecast",
    "cumulative_lr",
    "forecast_drift",
]
