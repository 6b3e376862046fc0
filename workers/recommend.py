"""From measurements to a recommended mix (../shared/method.md §4).

Pure rules over the rows a sweep measured; no database, no model. Three answers are computed for
every sweep and the objective picks which one is *the* ratio:

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
from typing import Literal, Protocol

from service.spec import RatioRank, Recommendation, SweepSpec

RETENTION_ROLES = ("pretraining", "retention")
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


@dataclass(frozen=True)
class _Ratio:
    ratio: float
    rows: dict[str, MeasurementRow]

    def retention_low(self) -> float:
        """Smallest lower bound of eta_c over pre-training and retention sets (0: rises at once)."""
        lows = [_low(row) for row in self.rows.values() if row.role in RETENTION_ROLES]
        return min(lows) if lows else 0.0

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
    spec: SweepSpec, measurements: Iterable[MeasurementRow], *, noise: float = 0.0
) -> Recommendation:
    """Apply the rules of method.md §4 to a finished sweep.

    Args:
        spec: The sweep as requested (planned learning rate, objective, weights).
        measurements: One row per (ratio, evaluation set); pruned rows are left out.
        noise: Loss changes up to this count as flat for the loss-change rule.

    Returns:
        The recommendation with its evidence.
    """
    by_ratio: dict[float, dict[str, MeasurementRow]] = defaultdict(dict)
    for row in measurements:
        if row.status != "pruned":
            by_ratio[row.ratio][row.eval_set] = row
    ratios = [_Ratio(r, rows) for r, rows in sorted(by_ratio.items())]
    lr = spec.learning_rate
    weights = {ref.name: ref.weight for ref in spec.finetuning}
    warnings = _warnings(spec, ratios)

    ranking = []
    for entry in ratios:
        pt_row = entry.rows.get(spec.pretraining.name)
        ranking.append(
            RatioRank(
                ratio=entry.ratio,
                pretraining_loss_change=entry.loss_change(("pretraining",), weights),
                finetuning_loss_change=entry.loss_change(("finetuning",), weights),
                eta_c_pretraining_low=_low(pt_row) if pt_row is not None else None,
                min_eta_c=entry.min_eta_c(),
                in_basin=entry.retention_low() > lr,
            )
        )
    flat = next((rank.ratio for rank in ranking if rank.in_basin), None)
    balanced = max(ratios, key=lambda e: e.min_eta_c() or 0.0).ratio if ratios else None
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

    chosen_entry = next((e for e in ratios if e.ratio == chosen), None)
    return Recommendation(
        objective=spec.objective,
        ratio=chosen,
        reason=reason,
        learning_rate=lr,
        in_basin=chosen_entry.retention_low() > lr if chosen_entry else None,
        max_stable_lr=chosen_entry.min_eta_c() if chosen_entry else None,
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
    if flat is not None:
        low = next(r.eta_c_pretraining_low for r in ranking if r.ratio == flat)
        return (
            f"{flat:g} is the smallest candidate ratio whose critical learning rate on the "
            f"pre-training data (lower bound {low:.3g}) and on every retention set is above the "
            f"planned lr {lr:g}: the first fine-tuning step starts inside the pre-training basin, "
            "so the pre-training loss stays flat, with the most fine-tuning data."
        )
    if not ratios:
        return "No ratio was measured, so there is nothing to recommend."
    best = max(ratios, key=lambda e: e.retention_low())
    safe_lr = best.retention_low()
    return (
        f"No candidate ratio keeps the pre-training loss flat at lr {lr:g}: every ratio's "
        f"critical learning rate on the retention sets is below it (best: ratio {best.ratio:g} "
        f"with lower bound {safe_lr:.3g}). Lower the learning rate below {safe_lr:.3g}, or try "
        "ratios with more pre-training data than the candidates."
    )


def _balanced_reason(balanced: float | None, ratios: list[_Ratio]) -> str:
    if balanced is None:
        return "No ratio was measured, so there is nothing to recommend."
    entry = next(e for e in ratios if e.ratio == balanced)
    return (
        f"{balanced:g} maximises the smallest critical learning rate over all evaluation sets "
        f"({entry.min_eta_c() or 0.0:.3g}): the ratio where the per-set curves cross, and the "
        "largest stable learning rate for the mix."
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
