"""Two sweeps of one tenant side by side (issue 11, part 5): per ratio each sweep's eta_c, loss
change and first-step verdict, both recommendations, and the spec fields that differ.

One short transaction reads both sweeps and their measurements; the comparison is built with
none open. Another tenant's sweep is one that does not exist (404).
"""

from __future__ import annotations

import math
from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.orm import Session

from contract.recommendation import Recommendation
from contract.reuse import RatioComparison, SetSide, SweepComparison, spec_differences
from contract.spec import RETENTION_ROLES, SweepSpec
from contract.states import SweepState
from contract.wire import finite
from service.db._errors import transaction
from service.db.models import Measurement, Sweep
from service.db.sweeps import _owned_without_commit


def compare_sweeps(session: Session, tenant_id: int, a: str, b: str) -> SweepComparison:
    """Sweeps ``a`` and ``b`` of the tenant, side by side.

    Raises:
        NotFoundError: when either does not exist or belongs to another tenant.
        DatabaseError: when the database cannot be reached.
    """
    with transaction(session, "read the sweeps to compare"):
        sweep_a = _owned_without_commit(session, tenant_id, a)
        sweep_b = _owned_without_commit(session, tenant_id, b)
        rows = list(
            session.scalars(
                select(Measurement)
                .where(Measurement.sweep_id.in_((a, b)))
                .order_by(Measurement.ratio, Measurement.eval_set, Measurement.id)
            )
        )
    by_ratio: dict[float, dict[str, list[Measurement]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_ratio[row.ratio][row.sweep_id].append(row)
    lr = {
        a: SweepSpec.model_validate(sweep_a.spec).learning_rate,
        b: SweepSpec.model_validate(sweep_b.spec).learning_rate,
    }
    ratios = []
    for ratio, sides in sorted(by_ratio.items()):
        names = sorted({row.eval_set for side in sides.values() for row in side})
        sets = {
            name: {
                "a": _side(sides.get(a, []), name),
                "b": _side(sides.get(b, []), name),
            }
            for name in names
        }
        ratios.append(
            RatioComparison(
                ratio=ratio,
                sets=sets,
                in_basin_a=_in_basin(sides.get(a, []), lr[a]),
                in_basin_b=_in_basin(sides.get(b, []), lr[b]),
            )
        )
    return SweepComparison(
        a=a,
        b=b,
        state_a=sweep_a.state.value,
        state_b=sweep_b.state.value,
        ratios=ratios,
        recommendation_a=_recommendation(sweep_a),
        recommendation_b=_recommendation(sweep_b),
        spec_differences=spec_differences(sweep_a.spec, sweep_b.spec),
    )


def _side(rows: list[Measurement], name: str) -> SetSide | None:
    row = next((r for r in rows if r.eval_set == name), None)
    if row is None:
        return None
    return SetSide(
        eta_c=finite(row.eta_c),
        eta_c_low=finite(row.eta_c_low),
        loss_change=finite(row.loss_change),
        status=row.status,
    )


def _in_basin(rows: list[Measurement], lr: float) -> bool | None:
    """The first-step verdict of one sweep at one ratio (as the recommendation's ranking)."""
    guarded = [r for r in rows if r.role in RETENTION_ROLES and r.status != "pruned"]
    if not guarded:
        return None
    lows = []
    for row in guarded:
        value = row.eta_c_low if row.eta_c_low is not None else row.eta_c
        ok = row.status != "increases_immediately" and value is not None and math.isfinite(value)
        lows.append(value if ok and value is not None else 0.0)
    return min(lows) > lr


def _recommendation(sweep: Sweep) -> Recommendation | None:
    if sweep.state != SweepState.succeeded or sweep.recommendation is None:
        return None
    return Recommendation.model_validate(sweep.recommendation)


__all__ = ["compare_sweeps"]
