"""A sweep warm-started from an earlier one (issue 11, part 5; ``warm_start_from`` in the spec).

Two things carry over, both from the earlier sweep's measurements:

- its Optuna study: every ratio it measured becomes a finished trial of the new study (with the
  values the new spec's objective gives them), so a range's sampler starts from them instead of
  from nothing, and the dashboard shows them beside the new trials;
- its eta_c per evaluation set (matched by name): the first guess of the new sweep's searches,
  which then start near the answer instead of at the planned rate.

eta_c does not depend on the planned rate, so the old values are the right guesses for a new rate
too; a different model or data only makes them worse guesses, never wrong answers (the search
brackets from wherever it starts).
"""

from __future__ import annotations

import math
import statistics

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from contract.results import MeasurementResult
from contract.spec import SweepSpec
from workers.study import (
    CONSTRAINT_ATTR,
    CONSTRAINTS_KEY,
    RATIO,
    constraint_margin,
    objective_values,
)

SEEDED_FROM = "warm_start_from"  # study user attribute: the sweep it was seeded from


def eta_guesses(points: list[tuple[float, list[MeasurementResult]]]) -> dict[str, float]:
    """Per evaluation set, the median of the earlier sweep's finite eta_c over its ratios."""
    values: dict[str, list[float]] = {}
    for _, measurements in points:
        for m in measurements:
            if m.eta_c is not None and math.isfinite(m.eta_c) and m.eta_c > 0:
                values.setdefault(m.eval_set, []).append(m.eta_c)
    return {name: statistics.median(v) for name, v in values.items()}


def seed_study(
    study: optuna.Study, spec: SweepSpec, points: list[tuple[float, list[MeasurementResult]]]
) -> int:
    """Add the earlier sweep's ratios to ``study`` as finished trials, once per study.

    Only ratios inside the new sweep's search space, measured on every evaluation set of the
    new spec (by name) and not pruned, are added.

    Returns:
        The number of trials added (0 when the study was seeded already).
    """
    if spec.warm_start_from is None or SEEDED_FROM in study.user_attrs:
        return 0
    # Marked first: a second worker opening the study at the same moment adds nothing.
    study.set_user_attr(SEEDED_FROM, spec.warm_start_from)
    low, high = (
        (0.0, 1.0) if spec.ratio_range is None else (spec.ratio_range.low, spec.ratio_range.high)
    )
    names = {ref.name for ref in spec.eval_sets()}
    added = 0
    for ratio, measurements in points:
        usable = [m for m in measurements if m.eval_set in names]
        if not low <= ratio <= high or {m.eval_set for m in usable} != names:
            continue
        if any(m.status == "pruned" for m in usable):
            continue
        values = objective_values(spec, ratio, usable)
        margin = constraint_margin(spec, usable)
        flat = spec.objective == "flat_pretraining"
        trial = create_trial(
            state=TrialState.COMPLETE,
            params={RATIO: ratio},
            distributions={RATIO: FloatDistribution(low, high)},
            values=values if isinstance(values, list) else [values],
            user_attrs={CONSTRAINT_ATTR: margin, SEEDED_FROM: spec.warm_start_from},
            system_attrs={CONSTRAINTS_KEY: [margin]} if flat else {},
        )
        study.add_trial(trial)
        added += 1
    return added


__all__ = ["SEEDED_FROM", "eta_guesses", "seed_study"]
