"""The stable region over (ratio, learning rate) of a sweep with a rate grid (issue 11, part 2).

Pure rules over the rows a sweep measured, beside ``workers/recommend.py``:

- first step: a rate is stable for a ratio when it is below that ratio's smallest lower bound of
  eta_c over the pre-training and every retention set (the flat rule of method.md §4 at that
  rate; eta_c itself does not depend on the rate);
- trajectory: trajectories run at the planned rate only. Where a ratio has one, its verdict
  (within the tolerance or not) decides that ratio at the planned rate. Its forecast grows with
  the cumulative learning rate (``workers/forecast.py``), so it also bounds the other rates: a
  ratio within the tolerance at the planned rate is within it at every lower rate, and a ratio
  beyond it is beyond it at every higher rate. Elsewhere the first-step rule answers.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Literal, Protocol

from contract.rates import RateBest, RatePoint, RateRegion, RatioMaxRate, same_rate
from contract.recommendation import TrajectoryVerdict
from contract.spec import RETENTION_ROLES, SweepSpec


class RateRow(Protocol):
    """What the region reads of a measurement (a database row or any object alike)."""

    ratio: float
    eval_set: str
    role: str
    status: str
    eta_c: float | None
    eta_c_low: float | None
    # and, where the sweep had a grid, ``rate_loss_changes``: [[rate, change], ...] (read with
    # getattr, so rows of sweeps without a grid need not have it)


def eta_c_bound(rows: Iterable[RateRow]) -> float:
    """The smallest lower bound of eta_c over the pre-training and retention sets (0: a set's
    loss rose at once, or none was measured)."""
    lows = []
    for row in rows:
        if row.role not in RETENTION_ROLES:
            continue
        value = row.eta_c_low if row.eta_c_low is not None else row.eta_c
        finite = value is not None and math.isfinite(value)
        lows.append(0.0 if row.status == "increases_immediately" or not finite else value)
    return min((v for v in lows if v is not None), default=0.0)


def rate_region(
    spec: SweepSpec,
    measurements: Iterable[RateRow],
    verdicts: Sequence[TrajectoryVerdict],
    recommended: float | None,
) -> RateRegion | None:
    """The region over the spec's rate grid; None when the spec has no grid.

    Args:
        spec: The sweep (its grid and planned rate).
        measurements: One row per (ratio, evaluation set); pruned rows are left out.
        verdicts: The trajectories' verdicts (at the planned rate), if any.
        recommended: The recommendation's ratio at the planned rate.
    """
    grid = spec.rate_grid
    if grid is None:
        return None
    planned = spec.learning_rate
    by_ratio: dict[float, list[RateRow]] = defaultdict(list)
    for row in measurements:
        if row.status != "pruned":
            by_ratio[row.ratio].append(row)
    by_verdict = {v.ratio: v for v in verdicts}
    points: list[RatePoint] = []
    max_rates: list[RatioMaxRate] = []
    for ratio, rows in sorted(by_ratio.items()):
        bound = eta_c_bound(rows)
        changes = _pretraining_changes(spec, rows)
        verdict = by_verdict.get(ratio)
        for lr in grid:
            stable, basis = _stable(lr, planned, bound, verdict)
            points.append(
                RatePoint(
                    ratio=ratio,
                    learning_rate=lr,
                    stable=stable,
                    basis=basis,
                    pretraining_loss_change=_at(changes, lr),
                )
            )
        stable_rates = [p.learning_rate for p in points if p.ratio == ratio and p.stable]
        max_rates.append(
            RatioMaxRate(
                ratio=ratio, max_stable_lr=max(stable_rates, default=None), eta_c_bound=bound
            )
        )
    best = [
        RateBest(
            learning_rate=lr,
            ratio=min(
                (p.ratio for p in points if p.stable and same_rate(p.learning_rate, lr)),
                default=None,
            ),
        )
        for lr in grid
    ]
    return RateRegion(
        learning_rates=grid,
        planned_learning_rate=planned,
        points=points,
        max_rates=max_rates,
        best_by_rate=best,
        best_ratio_at_planned=recommended,
        trajectory_rate=planned if spec.trajectory is not None else None,
    )


def _stable(
    lr: float, planned: float, bound: float, verdict: TrajectoryVerdict | None
) -> tuple[bool, Literal["first_step", "trajectory"]]:
    if verdict is not None:
        if same_rate(lr, planned):
            return verdict.within_tolerance, "trajectory"
        if lr < planned and verdict.within_tolerance:
            return True, "trajectory"
        if lr > planned and not verdict.within_tolerance:
            return False, "trajectory"
    return lr < bound, "first_step"


def _pretraining_changes(spec: SweepSpec, rows: list[RateRow]) -> list[tuple[float, float]]:
    """Per rate, the one-step loss change of the pre-training set (the largest over several)."""
    names = {ref.name for ref in spec.pretraining_sets}
    by_rate: dict[float, list[float]] = {}
    for row in rows:
        if row.eval_set not in names:
            continue
        pairs: Sequence[Sequence[float | None]] | None = getattr(row, "rate_loss_changes", None)
        for lr, change in pairs or ():
            if lr is not None:
                values = by_rate.setdefault(float(lr), [])
                values.append(math.nan if change is None else float(change))
    return [
        (lr, max((v for v in values if math.isfinite(v)), default=math.nan))
        for lr, values in sorted(by_rate.items())
    ]


def _at(changes: list[tuple[float, float]], lr: float) -> float | None:
    value = next((c for rate, c in changes if same_rate(rate, lr)), None)
    return value if value is not None and math.isfinite(value) else None


__all__ = ["RateRow", "eta_c_bound", "rate_region"]
