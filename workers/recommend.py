"""From measurements to a recommended mix (method.md §4 and §9).

Pure rules over the rows a sweep measured; no database, no model.

When the sweep ran trajectories, the answer rests on them (``basis: trajectory``): the smallest
ratio whose trajectory was not pruned and whose forecast drift at ``planned_steps`` stays within
the tolerance on the pre-training and every retention set: the point forecast by default, the
upper end of each forecast's interval with ``trajectory.accept: interval`` (the cautious answer;
a warning names it when the two differ). Otherwise (``basis: first_step``) three answers are
computed from the measurements at theta0 and the objective picks which one is *the* ratio; each
is a first-step verdict:

- flat pre-training (default): the smallest ratio whose lower confidence bound of eta_c on the
  pre-training set, and on every retention set, is above the planned learning rate;
- balanced: the ratio maximising min over all evaluation sets of eta_c (where the curves cross);
- pareto: the front of (fine-tuning loss change, pre-training loss change) at the planned rate.

Beside them, every ratio is ranked by its predicted one-step pre-training loss change at the
planned rate (method.md §7: the eta_c rule is safe but conservative), which gives the loss-change
answer ``least_forgetting_ratio``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from contract.mix import ratio_weights
from contract.recommendation import RatioRank, Recommendation, SetForecast, TrajectoryVerdict
from contract.spec import SweepSpec
from workers.rate_region import eta_c_bound, rate_region

WIDE_SPREAD = 2.0  # max/min of per-batch eta_c above this: batches disagree (method.md §7)
SMALL_BATCH_TOKENS = 16384  # method.md §7: a few thousand tokens per gradient gave noise


class MeasurementRow(Protocol):
    """What the rules read of a measurement (a database row or any object alike)."""

    ratio: float
    eval_set: str
    role: str
    status: str
    eta_c: float | None
    eta_c_low: float | None
    spread: float | None
    loss_change: float | None


class TrajectoryRow(Protocol):
    """What the rules read of a finished trajectory task (a database row or any object alike)."""

    ratio: float | None
    steps_done: int
    pruned: bool
    forecast: list[Any] | None


@dataclass(frozen=True)
class _Ratio:
    ratio: float
    rows: dict[str, MeasurementRow]
    weights: dict[str, float] | None = None  # a k-domain mix's own (None: the ratio form's)

    def retention_low(self) -> float:
        """Smallest lower bound of eta_c over pre-training and retention sets (0: rises at once)."""
        return eta_c_bound(self.rows.values())

    def min_eta_c(self) -> float | None:
        values = [_point(row) for row in self.rows.values()]
        return min(values) if values else None

    def loss_change(self, roles: Sequence[str], weights: dict[str, float]) -> float | None:
        pairs = [
            (weights.get(name, 1.0), row.loss_change)
            for name, row in self.rows.items()
            if row.role in roles and row.loss_change is not None
        ]
        if not pairs:
            return None
        total = sum(w for w, _ in pairs)
        return sum(w * c for w, c in pairs if c is not None) / total


def _low(row: MeasurementRow) -> float:
    if row.status == "increases_immediately":
        return 0.0
    value = row.eta_c_low if row.eta_c_low is not None else row.eta_c
    return value if value is not None and math.isfinite(value) else 0.0


def _point(row: MeasurementRow) -> float:
    # The worker's point estimate already counts batches that rose at once (as 0, via a median).
    return row.eta_c if row.eta_c is not None and math.isfinite(row.eta_c) else 0.0


def recommend(
    spec: SweepSpec,
    measurements: Iterable[MeasurementRow],
    *,
    trajectories: Sequence[TrajectoryRow] = (),
    noise: float = 0.0,
) -> Recommendation:
    """Apply the rules of method.md §4 (and §9 where trajectories ran) to a finished sweep.

    Args:
        spec: The sweep as requested (planned learning rate, objective, weights).
        measurements: One row per (ratio, evaluation set); pruned rows are left out.
        trajectories: The sweep's finished trajectory tasks, with their forecasts.
        noise: Loss changes up to this count as flat for the loss-change rule.

    Returns:
        The recommendation with its evidence.
    """
    measurements = list(measurements)
    if spec.mixes is not None or spec.mix_search is not None:
        # Imported here: recommend_mix builds on this module's helpers.
        from workers.recommend_mix import recommend_mixes

        first = recommend_mixes(spec, measurements, noise=noise)
    else:
        first = _first_step(spec, measurements, noise)
    if not trajectories and spec.trajectory is None:
        answer = first
    else:
        answer = _on_trajectories(spec, first, trajectories)
    # Issue 11, part 2: the stable region over (ratio, rate) when the spec has a rate grid.
    region = rate_region(spec, measurements, answer.trajectories, answer.ratio)
    return answer if region is None else answer.model_copy(update={"rate_region": region})


def _first_step(
    spec: SweepSpec, measurements: list[MeasurementRow], noise: float
) -> Recommendation:
    by_ratio: dict[float, dict[str, MeasurementRow]] = defaultdict(dict)
    pruned_ratios = sorted({row.ratio for row in measurements if row.status == "pruned"})
    for row in measurements:
        if row.status != "pruned":
            by_ratio[row.ratio][row.eval_set] = row
    ratios = [_Ratio(r, rows) for r, rows in sorted(by_ratio.items())]
    lr = spec.learning_rate
    weights = {ref.name: ref.weight for ref in spec.finetuning}
    warnings = _warnings(spec, ratios)

    ranking = []
    for entry in ratios:
        pt_lows = [_low(row) for row in entry.rows.values() if row.role == "pretraining"]
        ranking.append(
            RatioRank(
                ratio=entry.ratio,
                weights=entry.weights
                if entry.weights is not None
                else ratio_weights(spec, entry.ratio),
                pretraining_loss_change=entry.loss_change(("pretraining",), weights),
                finetuning_loss_change=entry.loss_change(("finetuning",), weights),
                eta_c_pretraining_low=min(pt_lows) if pt_lows else None,
                min_eta_c=entry.min_eta_c(),
                in_basin=entry.retention_low() > lr,
            )
        )
    flat = next((rank.ratio for rank in ranking if rank.in_basin), None)
    balanced = _crossing(ratios)
    least_forgetting = next(
        (
            rank.ratio
            for rank in ranking
            if rank.pretraining_loss_change is not None
            and rank.pretraining_loss_change <= noise
            and (rank.finetuning_loss_change is None or rank.finetuning_loss_change < 0)
        ),
        None,
    )
    pareto = _pareto(ranking)

    if spec.objective == "balanced":
        chosen, reason = balanced, _balanced_reason(balanced, ratios)
        if not ratios:
            reason = _nothing_measured(pruned_ratios, lr)
    elif spec.objective == "pareto":
        chosen = flat if flat in pareto else (pareto[0] if pareto else None)
        reason = (
            f"{len(pareto)} ratios are on the trade-off front of fine-tuning gain against "
            f"pre-training loss at lr {lr:g}: {', '.join(f'{r:g}' for r in pareto)}. "
            + (
                f"{chosen:g} is the front's ratio that keeps the pre-training loss flat."
                if chosen is not None and chosen == flat
                else "Pick the trade-off you want from the front."
            )
        )
    else:
        chosen, reason = flat, _flat_reason(flat, ranking, ratios, lr)
        if not ratios:
            reason = _nothing_measured(pruned_ratios, lr)

    chosen_entry = next((e for e in ratios if e.ratio == chosen), None)
    return Recommendation(
        objective=spec.objective,
        ratio=chosen,
        weights=ratio_weights(spec, chosen) if chosen is not None else None,
        reason=reason,
        basis="first_step",
        learning_rate=lr,
        planned_steps=spec.planned_steps,
        tolerance=spec.tolerance,
        in_basin=chosen_entry.retention_low() > lr if chosen_entry else None,
        max_stable_lr=chosen_entry.retention_low() if chosen_entry else None,
        flat_ratio=flat,
        balanced_ratio=balanced,
        least_forgetting_ratio=least_forgetting,
        confidence=_confidence(spec, ratios, chosen_entry),
        ranking=ranking,
        pareto_ratios=pareto,
        warnings=warnings,
    )


def _flat_reason(
    flat: float | None, ranking: list[RatioRank], ratios: list[_Ratio], lr: float
) -> str:
    caveat = (
        " This is a first-step verdict: it says nothing of how the pre-training loss drifts over "
        "the planned run (on real text it rose well below the first step's critical rate); add "
        "'trajectory' to the spec to step on each mix and forecast the drift."
    )
    if flat is not None:
        low = next(r.eta_c_pretraining_low for r in ranking if r.ratio == flat)
        share = (
            "only pure pre-training data (1.0 means no fine-tuning data at all) qualifies"
            if flat >= 1.0
            else f"{flat:g} is the smallest candidate ratio that qualifies, the most fine-tuning "
            "data among those that do"
        )
        return (
            f"At the planned lr {lr:g} {share}: its critical learning rate on the pre-training "
            f"data (lower bound {low:.3g}) and on every retention set is above the planned rate, "
            "so the first fine-tuning step starts inside the pre-training basin." + caveat
        )
    if not ratios:
        return "No ratio was measured, so there is nothing to recommend."
    best = max(ratios, key=lambda e: e.retention_low())
    safe_lr = best.retention_low()
    if safe_lr <= 0.0:
        # No rate to suggest: at every ratio some retained loss rises at any step size.
        return (
            f"No candidate ratio keeps the pre-training loss flat at lr {lr:g}: at every ratio "
            "the first fine-tuning step raises the pre-training or a retention loss however "
            "small the learning rate (its update direction points uphill there, critical rate "
            "0). Try ratios with more pre-training data than the candidates; this is a "
            "first-step verdict, and 'trajectory' in the spec measures whether the rise stays "
            "within the tolerance over the planned run."
        )
    return (
        f"No candidate ratio keeps the pre-training loss flat at lr {lr:g}: every ratio's "
        f"critical learning rate on the retention sets is below it (best: ratio {best.ratio:g} "
        f"with lower bound {safe_lr:.3g}). Lower the learning rate below {safe_lr:.3g}, or try "
        "ratios with more pre-training data than the candidates."
    )


def _nothing_measured(pruned: list[float], lr: float) -> str:
    if not pruned:
        return "No ratio was measured, so there is nothing to recommend."
    listed = ", ".join(f"{r:g}" for r in pruned)
    return (
        f"Every candidate ratio ({listed}) was pruned: at each, the planned lr {lr:g} was already "
        "more than 4x above the critical learning rate of a retention set on two batches, so none "
        "can keep the pre-training loss flat. Lower the learning rate, or try ratios with more "
        "pre-training data."
    )


def _crossing(ratios: list[_Ratio]) -> float | None:
    """The ratio maximising min_e eta_c, when that maximum lies inside the candidates.

    At an end of the candidates the per-set curves have not crossed (the smallest eta_c still
    grows towards that end), and answering the end would only echo the range.
    """
    if len(ratios) < 3:
        return None
    values = [e.min_eta_c() or 0.0 for e in ratios]
    best = max(range(len(values)), key=lambda i: values[i])
    return ratios[best].ratio if 0 < best < len(ratios) - 1 else None


def _balanced_reason(balanced: float | None, ratios: list[_Ratio]) -> str:
    if balanced is None and ratios:
        values = [e.min_eta_c() or 0.0 for e in ratios]
        end = ratios[max(range(len(values)), key=lambda i: values[i])].ratio
        return (
            f"The per-set critical-learning-rate curves do not cross within the candidates "
            f"({ratios[0].ratio:g}-{ratios[-1].ratio:g}): the smallest eta_c over the sets is "
            f"largest at the end of the range ({end:g}), so the balanced rule has no answer here. "
            "Widen the candidates past that end, or use the flat_pretraining objective."
        )
    if balanced is None:
        return "No ratio was measured, so there is nothing to recommend."
    entry = next(e for e in ratios if e.ratio == balanced)
    return (
        f"{balanced:g} maximises the smallest critical learning rate over all evaluation sets "
        f"({entry.min_eta_c() or 0.0:.3g}): the ratio where the per-set curves cross, and the "
        "largest first-step stable learning rate for the mix (a first-step verdict)."
    )


def _pareto(ranking: list[RatioRank]) -> list[float]:
    points = [
        (r.ratio, r.finetuning_loss_change, r.pretraining_loss_change)
        for r in ranking
        if r.finetuning_loss_change is not None and r.pretraining_loss_change is not None
    ]
    front = []
    for ratio, ft, pt in points:
        dominated = any(
            (ft2 <= ft and pt2 <= pt) and (ft2 < ft or pt2 < pt) for _, ft2, pt2 in points
        )
        if not dominated:
            front.append(ratio)
    return front


def _warnings(spec: SweepSpec, ratios: list[_Ratio]) -> list[str]:
    warnings = []
    if spec.batch_tokens < SMALL_BATCH_TOKENS:
        warnings.append(
            f"batch_tokens={spec.batch_tokens} is small: with a few thousand tokens per gradient "
            "eta_c can vary by orders of magnitude between batches; use tens of thousands."
        )
    for entry in ratios:
        for name, row in entry.rows.items():
            if row.spread is not None and row.spread > WIDE_SPREAD:
                warnings.append(
                    f"ratio {entry.ratio:g}, set {name}: batches disagree (max/min eta_c "
                    f"{row.spread:.3g}); raise batch_tokens or batches."
                )
            if row.status == "no_increase":
                warnings.append(
                    f"ratio {entry.ratio:g}, set {name}: the loss never rose within the search "
                    "cap; eta_c is a lower bound."
                )
    return warnings


def _confidence(
    spec: SweepSpec, ratios: list[_Ratio], chosen: _Ratio | None
) -> Literal["high", "medium", "low"]:
    if chosen is None or spec.batches < 2:
        return "low"
    spreads = [row.spread for row in chosen.rows.values() if row.spread is not None]
    if any(s > WIDE_SPREAD for s in spreads) or spec.batch_tokens < SMALL_BATCH_TOKENS:
        return "low"
    if spec.batches >= 4 and all(s <= 1.5 for s in spreads):
        return "high"
    return "medium"


def _verdict(spec: SweepSpec, row: TrajectoryRow) -> TrajectoryVerdict:
    forecasts = [SetForecast.model_validate(f) for f in row.forecast or []]
    retention = [f for f in forecasts if spec.guarded(f.eval_set)]
    tuning = [f for f in forecasts if f.role == "finetuning" and f.drift is not None]
    weights = {ref.name: ref.weight for ref in spec.finetuning}
    drift = max((f.drift for f in retention if f.drift is not None), default=None)
    highs = [f.high for f in retention]
    high = (
        None
        if not highs or any(h is None for h in highs)
        else max(h for h in highs if h is not None)
    )
    gain = None
    if tuning:
        total = sum(weights.get(f.eval_set, 1.0) for f in tuning)
        gain = -sum(weights.get(f.eval_set, 1.0) * (f.drift or 0.0) for f in tuning) / total
    return TrajectoryVerdict(
        ratio=row.ratio if row.ratio is not None else math.nan,
        # A listed k-domain mix's task row carries its weights (rows of ratio sweeps have none).
        weights=getattr(row, "weights", None),
        steps_done=row.steps_done,
        pruned=row.pruned,
        retention_drift=drift,
        retention_drift_high=high,
        finetuning_gain=gain,
        within_tolerance=_passes(row.pruned, drift, high, spec.tolerance, _accept(spec)),
        forecasts=forecasts,
    )


def _accept(spec: SweepSpec) -> Literal["forecast", "interval"]:
    return spec.trajectory.accept if spec.trajectory is not None else "forecast"


def _passes(
    pruned: bool,
    drift: float | None,
    high: float | None,
    tolerance: float,
    accept: Literal["forecast", "interval"],
) -> bool:
    """Whether a trajectory's forecast keeps every guarded set within the tolerance at N."""
    judged = drift if accept == "forecast" else high
    # A forecast with an unbounded interval (too few points) is no answer under either rule.
    return not pruned and high is not None and judged is not None and judged <= tolerance


def _judged(verdict: TrajectoryVerdict, accept: Literal["forecast", "interval"]) -> float:
    value = verdict.retention_drift if accept == "forecast" else verdict.retention_drift_high
    return value if value is not None else math.inf


def _on_trajectories(
    spec: SweepSpec, first: Recommendation, rows: Sequence[TrajectoryRow]
) -> Recommendation:
    accept = _accept(spec)
    # By ratio (rounded: 0.1 + 0.2 is 0.3), then the least drift: mixes can share a ratio.
    verdicts = sorted(
        (_verdict(spec, row) for row in rows),
        key=lambda v: (round(v.ratio, 9), _judged(v, accept)),
    )
    chosen = next((v for v in verdicts if v.within_tolerance), None)
    n, tol = spec.planned_steps, spec.tolerance
    if not verdicts:
        reason = (
            "No trajectory finished, so there is no answer over the planned run; "
            f"the first-step screen said: {first.reason}"
        )
    elif chosen is None and all(v.pruned for v in verdicts):
        reason = (
            f"Every trajectory ({', '.join(f'{v.ratio:g}' for v in verdicts)}) was pruned: each "
            f"mix clearly left the pre-training basin (a guarded loss above the tolerance "
            f"{tol:g} nats at three measurements after the burn-in and no downward trend "
            f"since it) before step {spec.trajectory.steps if spec.trajectory else n}. Lower "
            "the learning rate, or "
            "try ratios with more pre-training data."
        )
    elif chosen is None:
        best = min(verdicts, key=lambda v: _judged(v, accept))
        reason = (
            f"No trajectory's {_rule_words(accept)} keeps the pre-training and retention losses "
            f"within {tol:g} nats over "
            f"the planned {n} steps at lr {spec.learning_rate:g}: the least drift was ratio "
            f"{best.ratio:g} with a forecast of {_nats(best.retention_drift)} (up to "
            f"{_nats(best.retention_drift_high)}). Try ratios with more pre-training data, a "
            "lower learning rate, or a shorter run."
        )
    else:
        share = (
            "only pure pre-training data (1.0: no fine-tuning data at all)"
            if chosen.ratio >= 1.0
            else f"ratio {chosen.ratio:g}"
        )
        if chosen.weights is not None:
            named = ", ".join(f"{n} {w:.3g}" for n, w in chosen.weights.items())
            share = f"the mix {named} (ratio {chosen.ratio:g})"
        gain = (
            f", while the fine-tuning loss falls by a forecast {chosen.finetuning_gain:.3g} nats"
            if chosen.finetuning_gain is not None
            else ""
        )
        how = "measured" if all(f.measured for f in chosen.forecasts) else "forecast"
        reason = (
            f"At lr {spec.learning_rate:g} over the planned {n} steps, {share} is the smallest "
            f"ratio whose trajectory's {_rule_words(accept)} keeps the pre-training and every "
            f"retention loss within {tol:g} nats: {how} drift "
            f"{_nats(chosen.retention_drift)} (up to {_nats(chosen.retention_drift_high)}) "
            f"after {chosen.steps_done} real steps{gain}."
        )
    warnings = list(first.warnings)
    if (
        chosen is not None
        and accept == "forecast"
        and (chosen.retention_drift_high is None or chosen.retention_drift_high > tol)
    ):
        cautious = next(
            (
                v
                for v in verdicts
                if _passes(v.pruned, v.retention_drift, v.retention_drift_high, tol, "interval")
            ),
            None,
        )
        warnings.append(
            f"the forecast interval of ratio {chosen.ratio:g} reaches "
            f"{_nats(chosen.retention_drift_high)}, above the tolerance; the cautious answer "
            "(trajectory.accept 'interval': every interval within the tolerance) is "
            + (f"ratio {cautious.ratio:g}" if cautious is not None else "none of the ratios tried")
        )
    if first.ratio is not None and chosen is not None and chosen.ratio > first.ratio:
        warnings.append(
            f"the first-step screen alone would have answered {first.ratio:g}; its trajectory "
            "drifts beyond the tolerance, so the answer rests on the trajectories"
        )
    return first.model_copy(
        update={
            "ratio": chosen.ratio if chosen is not None else None,
            "weights": _weights_of(spec, chosen),
            "reason": reason,
            "basis": "trajectory",
            "forecast_drift": chosen.retention_drift if chosen else None,
            "forecast_drift_high": chosen.retention_drift_high if chosen else None,
            "finetuning_gain": chosen.finetuning_gain if chosen else None,
            "trajectories": verdicts,
            "in_basin": _first_in_basin(first, chosen) if chosen else None,
            "max_stable_lr": _first_stable(first, chosen) if chosen else None,
            "confidence": _trajectory_confidence(chosen, spec),
            "warnings": warnings,
        }
    )


def _rule_words(accept: Literal["forecast", "interval"]) -> str:
    return "forecast" if accept == "forecast" else "forecast interval"


def _nats(value: float | None) -> str:
    return "unbounded" if value is None else f"{value:+.3g} nats"


def _weights_of(spec: SweepSpec, chosen: TrajectoryVerdict | None) -> dict[str, float] | None:
    if chosen is None:
        return None
    return chosen.weights if chosen.weights is not None else ratio_weights(spec, chosen.ratio)


def _rank_of(first: Recommendation, verdict: TrajectoryVerdict) -> RatioRank | None:
    # A listed mix is found by its weights (mixes can share a ratio), a ratio by its value.
    if verdict.weights is not None:
        return next((r for r in first.ranking if r.weights == verdict.weights), None)
    return next((r for r in first.ranking if r.ratio == verdict.ratio), None)


def _first_in_basin(first: Recommendation, verdict: TrajectoryVerdict) -> bool | None:
    rank = _rank_of(first, verdict)
    return rank.in_basin if rank is not None else None


def _first_stable(first: Recommendation, verdict: TrajectoryVerdict) -> float | None:
    rank = _rank_of(first, verdict)
    return rank.eta_c_pretraining_low if rank is not None else None


def _trajectory_confidence(
    chosen: TrajectoryVerdict | None, spec: SweepSpec
) -> Literal["high", "medium", "low"]:
    if chosen is None or chosen.retention_drift_high is None:
        return "low"
    if all(f.measured for f in chosen.forecasts):
        return "high"
    # A forecast whose upper end still leaves half the tolerance free is a safe extrapolation.
    return "medium" if chosen.retention_drift_high <= spec.tolerance / 2 else "low"


def plan_trajectories(spec: SweepSpec, measurements: Iterable[MeasurementRow]) -> list[float]:
    """The screen ratios a ``ratios: auto`` sweep spends its trajectories on.

    Around the screen's boundary: the smallest ratio whose first step stays in the basin and the
    next ones above it (trajectories below it would start outside already); with too few above,
    the nearest ones below; with no ratio in the basin, the ones with the most pre-training data.
    """
    assert spec.trajectory is not None
    first = _first_step(spec, list(measurements), 0.0)
    ratios = sorted(r.ratio for r in first.ranking)
    if not ratios:
        ratios = spec.screen_ratios
    k = min(spec.trajectory.ratios, len(ratios))
    start = ratios.index(first.flat_ratio) if first.flat_ratio in ratios else len(ratios) - k
    start = min(start, len(ratios) - k)
    return ratios[start : start + k]
