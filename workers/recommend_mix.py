"""The first-step answer over k-domain mixes (``mixes``, ``mix_search``; method.md §4).

The rules of `workers.recommend` applied to mixes instead of ratios. Several mixes can share a
pre-training total (the same ratio, split differently), so candidates are told apart by their
weights, never by the ratio alone:

- flat pre-training: among the mixes whose lower bound of eta_c on the pre-training and every
  retention set is above the planned rate, the one with the least pre-training data (the most
  fine-tuning data); between mixes with the same pre-training total, the one with the widest
  margin (largest of those lower bounds);
- balanced: the mix maximising the smallest eta_c over all evaluation sets (in k dimensions
  there is no end of a range to rule out, so the best measured mix is the answer);
- pareto: the mixes on the front of (fine-tuning loss change, pre-training loss change);
- loss change: the least pre-training mix whose one-step pre-training loss change is within the
  noise while the fine-tuning loss falls.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from contract.mix import domains
from contract.recommendation import RatioRank, Recommendation
from contract.spec import SweepSpec
from workers.recommend import MeasurementRow, _confidence, _low, _Ratio, _warnings


def recommend_mixes(
    spec: SweepSpec, measurements: Iterable[MeasurementRow], *, noise: float = 0.0
) -> Recommendation:
    """The first-step recommendation of a k-domain sweep; the answer names its weights.

    Args:
        measurements: One row per (mix, evaluation set), each with the mix's ``weights``.

    Raises:
        ValueError: a row without weights (a k-domain sweep's rows always carry them).
    """
    grouped: dict[tuple[tuple[str, float], ...], dict[str, MeasurementRow]] = defaultdict(dict)
    pruned = 0
    for row in measurements:
        weights: dict[str, float] | None = getattr(row, "weights", None)
        if weights is None:
            raise ValueError(f"a measurement of {row.eval_set!r} has no mix weights")
        key = tuple(sorted(weights.items()))
        if row.status == "pruned":
            pruned += 1
            continue
        grouped[key][row.eval_set] = row
    order = [d.name for d in domains(spec)]  # weights read in the spec's order of sets
    entries = sorted(
        (
            _Ratio(next(iter(rows.values())).ratio, rows, {n: dict(key).get(n, 0.0) for n in order})
            for key, rows in grouped.items()
        ),
        # Rounded: 0.1 + 0.2 and 0.3 are one pre-training total, whatever the float sums say.
        key=lambda e: (round(e.ratio, 9), -e.retention_low()),
    )
    lr = spec.learning_rate
    tuning = {ref.name: ref.weight for ref in spec.finetuning}
    ranking = [_rank(entry, lr, tuning) for entry in entries]

    flat = next((i for i, rank in enumerate(ranking) if rank.in_basin), None)
    balanced = (
        max(range(len(entries)), key=lambda i: entries[i].min_eta_c() or 0.0) if entries else None
    )
    forgetting = next(
        (
            i
            for i, rank in enumerate(ranking)
            if rank.pretraining_loss_change is not None
            and rank.pretraining_loss_change <= noise
            and (rank.finetuning_loss_change is None or rank.finetuning_loss_change < 0)
        ),
        None,
    )
    front = _front(ranking)
    if spec.objective == "balanced":
        chosen = balanced
    elif spec.objective == "pareto":
        chosen = flat if flat in front else (front[0] if front else None)
    else:
        chosen = flat
    entry = entries[chosen] if chosen is not None else None

    def ratio_of(i: int | None) -> float | None:
        return entries[i].ratio if i is not None else None

    return Recommendation(
        objective=spec.objective,
        ratio=ratio_of(chosen),
        weights=entry.weights if entry is not None else None,
        reason=_reason(spec, entries, entry, pruned),
        basis="first_step",
        learning_rate=lr,
        planned_steps=spec.planned_steps,
        tolerance=spec.tolerance,
        in_basin=entry.retention_low() > lr if entry else None,
        max_stable_lr=entry.retention_low() if entry else None,
        flat_ratio=ratio_of(flat),
        balanced_ratio=ratio_of(balanced),
        least_forgetting_ratio=ratio_of(forgetting),
        confidence=_confidence(spec, entries, entry),
        ranking=ranking,
        pareto_ratios=[entries[i].ratio for i in front],
        warnings=_warnings(spec, entries),
    )


def _rank(entry: _Ratio, lr: float, tuning: dict[str, float]) -> RatioRank:
    pt_lows = [_low(row) for row in entry.rows.values() if row.role == "pretraining"]
    return RatioRank(
        ratio=entry.ratio,
        weights=entry.weights,
        pretraining_loss_change=entry.loss_change(("pretraining",), tuning),
        finetuning_loss_change=entry.loss_change(("finetuning",), tuning),
        eta_c_pretraining_low=min(pt_lows) if pt_lows else None,
        min_eta_c=entry.min_eta_c(),
        in_basin=entry.retention_low() > lr,
    )


def _front(ranking: list[RatioRank]) -> list[int]:
    points = [
        (i, r.finetuning_loss_change, r.pretraining_loss_change)
        for i, r in enumerate(ranking)
        if r.finetuning_loss_change is not None and r.pretraining_loss_change is not None
    ]
    return [
        i
        for i, ft, pt in points
        if not any((f <= ft and p <= pt) and (f < ft or p < pt) for _, f, p in points)
    ]


def describe(weights: dict[str, float]) -> str:
    """A mix in words: ``web 0.2, code 0.1, math 0.7``."""
    return ", ".join(f"{name} {share:.3g}" for name, share in weights.items())


def _reason(spec: SweepSpec, entries: list[_Ratio], entry: _Ratio | None, pruned: int) -> str:
    lr = spec.learning_rate
    if not entries:
        more = f" ({pruned} measurements were pruned: clearly outside the basin)" if pruned else ""
        return f"No mix was measured to the end{more}, so there is nothing to recommend."
    if entry is None:
        best = max(entries, key=lambda e: e.retention_low())
        return (
            f"No candidate mix keeps the pre-training loss flat at lr {lr:g}: every mix's critical "
            "learning rate on the pre-training or a retention set is below it (best: "
            f"{describe(best.weights or {})} with lower bound {best.retention_low():.3g}). Lower "
            f"the learning rate below {best.retention_low():.3g}, or try mixes with more "
            "pre-training data."
        )
    mix = describe(entry.weights or {})
    if spec.objective == "balanced":
        return (
            f"The mix {mix} maximises the smallest critical learning rate over all evaluation "
            f"sets ({entry.min_eta_c() or 0.0:.3g}) among the {len(entries)} measured mixes (a "
            "first-step verdict)."
        )
    return (
        f"At the planned lr {lr:g} the mix {mix} (pre-training total {entry.ratio:g}) has the "
        f"least pre-training data of the {len(entries)} measured mixes whose critical learning "
        "rate on the pre-training and every retention set (lower bound "
        f"{entry.retention_low():.3g}) is above the planned rate, so the first fine-tuning step "
        "starts inside the pre-training basin. This is a first-step verdict: it says nothing of "
        "how the losses drift over the planned run."
    )


__all__ = ["describe", "recommend_mixes"]
