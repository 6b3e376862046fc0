"""k-domain mixes: a mix is a point on the simplex over every direction domain of a sweep, its
pre-training sources and its fine-tuning sets (method.md §3: ``g = sum_k w_k g_k``).

A sweep asks for its mixes in one of four ways:

- ``ratios`` or ``ratio_range`` (the two-domain form, also for several sources): the pre-training
  share r; within r the pre-training sources split by their relative ``weight``, within 1 - r
  the fine-tuning sets by theirs;
- ``mixes``: explicit weights per domain, each mix summing to 1;
- ``mix_search``: Optuna searches the simplex within each domain's ``min``/``max``/``share``.

Whatever the form, a mix's *ratio* stays its total pre-training share, so every rule that speaks
in ratios (the flat-pre-training objective, the task rows, exports) keeps its meaning. Through the
worker loop a mix travels as a `Candidate`: its ratio, and a k-domain mix's weights beside it.

The search samples the free coordinates by stick-breaking (uniform ``u`` in [0, 1) become a
uniform Dirichlet point; Optuna's TPE models the ``u``), scales the point into the room the
minimum shares leave, and projects it onto the upper bounds (the Euclidean projection onto
``{low <= w <= high, sum w = 1}``, a shift found by bisection). Every sampled mix is feasible,
so no trial is spent on a rejected point.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from contract.spec import SweepSpec

MIX_SUM_TOLERANCE = 1e-6  # an explicit mix's weights must sum to 1 within this
_BOUND_TOLERANCE = 1e-9  # rounding room when an explicit weight is checked against its bounds

Share = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MixBounds(_Frozen):
    """Bounds of one domain's share of the whole mix, for ``mixes`` and ``mix_search``."""

    min: Share | None = Field(
        default=None,
        description="With 'mixes' or 'mix_search': the smallest share of the whole mix (0 to 1) "
        "this set may get.",
    )
    max: Share | None = Field(
        default=None,
        description="With 'mixes' or 'mix_search': the largest share of the whole mix this set "
        "may get.",
    )
    share: Share | None = Field(
        default=None,
        description="With 'mixes' or 'mix_search': a fixed share of the whole mix, instead of "
        "'min' and 'max'.",
    )

    @model_validator(mode="after")
    def _bounds_ordered(self) -> Self:
        if self.share is not None and (self.min is not None or self.max is not None):
            raise ValueError("give 'share' (a fixed share) or 'min'/'max' (a range), not both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"'min' ({self.min:g}) is above 'max' ({self.max:g})")
        return self

    @property
    def bounded(self) -> bool:
        """Whether any bound is given: the set is then a coordinate of its own in a search."""
        return self.min is not None or self.max is not None or self.share is not None

    @property
    def low(self) -> float:
        """The smallest share this set may get."""
        return self.share if self.share is not None else (self.min or 0.0)

    @property
    def high(self) -> float:
        """The largest share this set may get."""
        if self.share is not None:
            return self.share
        return 1.0 if self.max is None else self.max


class PretrainingMix(MixBounds):
    """What a pre-training source adds for k-domain mixes: its weight within the pre-training
    share, beside its bounds."""

    weight: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] | None = Field(
        default=None,
        description="With several pre-training sources: this source's share of the pre-training "
        "part of a mix (normalised over the sources; default: equal shares).",
    )


def _sums_to_one(mix: dict[str, float]) -> dict[str, float]:
    total = math.fsum(mix.values())
    if abs(total - 1.0) > MIX_SUM_TOLERANCE:
        raise ValueError(f"the weights sum to {total:.9g}; a mix's weights must sum to 1")
    return mix


MixWeights = Annotated[
    dict[
        Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")],
        Share,
    ],
    Field(min_length=1),
    AfterValidator(_sums_to_one),
]


class MixSearch(_Frozen):
    """A search over the simplex of the pre-training sources and fine-tuning sets."""

    trials: int = Field(
        ge=2,
        le=10_000,
        description="How many mixes Optuna's sampler measures (stick-breaking Dirichlet "
        "coordinates modelled by TPE, projected onto every set's min/max).",
    )


@dataclass(frozen=True)
class Domain:
    """One direction domain of a sweep: a pre-training source or a fine-tuning set."""

    name: str
    field: str  # where it is in the spec, for messages: "pretraining[1]", "finetuning[0]"
    pretraining: bool
    weight: float  # relative weight within its role (ratios, and unbounded sets of a search)
    bounded: bool
    low: float
    high: float


def domains(spec: SweepSpec) -> list[Domain]:
    """The sweep's direction domains in gradient order: pre-training sources, then fine-tuning."""
    listed = isinstance(spec.pretraining, list)
    out = [
        Domain(
            name=ref.name,
            field=f"pretraining[{i}]" if listed else "pretraining",
            pretraining=True,
            weight=ref.weight or 1.0,
            bounded=ref.bounded,
            low=ref.low,
            high=ref.high,
        )
        for i, ref in enumerate(spec.pretraining_sets)
    ]
    out += [
        Domain(
            name=ref.name,
            field=f"finetuning[{i}]",
            pretraining=False,
            weight=ref.weight,
            bounded=ref.bounded,
            low=ref.low,
            high=ref.high,
        )
        for i, ref in enumerate(spec.finetuning)
    ]
    return out


def ratio_weights(spec: SweepSpec, ratio: float) -> dict[str, float]:
    """Weights per domain of the mix with pre-training share ``ratio`` (the ratio form)."""
    all_domains = domains(spec)
    totals = {
        role: sum(d.weight for d in all_domains if d.pretraining == role) for role in (True, False)
    }
    return {
        d.name: (ratio if d.pretraining else 1.0 - ratio) * d.weight / totals[d.pretraining]
        for d in all_domains
    }


def pretraining_share(spec: SweepSpec, weights: Mapping[str, float]) -> float:
    """A mix's ratio: the total weight of its pre-training sources."""
    return math.fsum(weights.get(ref.name, 0.0) for ref in spec.pretraining_sets)


def explicit_mix(spec: SweepSpec, slot: int) -> dict[str, float]:
    """The ``slot``-th listed mix with every domain named (an omitted one weighs 0)."""
    assert spec.mixes is not None
    mix = spec.mixes[slot]
    return {d.name: mix.get(d.name, 0.0) for d in domains(spec)}


@dataclass(frozen=True)
class Candidate:
    """One candidate mix as the worker loop, the task rows, the studies and the sweep worker pass
    it from one to the next.

    Every rule that speaks in ratios (the flat-pre-training objective, the task rows, exports)
    reads ``ratio``; the measurement and the trajectory step along ``weights`` when a k-domain
    mix gives them, else along the ratio form's weights (`ratio_weights`).

    Attributes:
        ratio: The mix's total pre-training share.
        weights: A k-domain mix's share per domain (``mixes``, ``mix_search``), every domain of
            the spec named in gradient order; None for the ratio form.
    """

    ratio: float
    weights: dict[str, float] | None = None

    @classmethod
    def of_mix(cls, spec: SweepSpec, weights: Mapping[str, float]) -> Candidate:
        """A k-domain mix: its ratio is its pre-training total; a domain it leaves out weighs 0."""
        return cls(
            ratio=pretraining_share(spec, weights),
            weights={d.name: float(weights.get(d.name, 0.0)) for d in domains(spec)},
        )


@dataclass(frozen=True)
class _Part:
    """A coordinate of the search: one bounded set, or the unbounded sets of a role together
    (split by their relative weights)."""

    names: tuple[str, ...]
    weights: tuple[float, ...]
    low: float
    high: float


def _parts(spec: SweepSpec) -> list[_Part]:
    all_domains = domains(spec)
    parts = [_Part((d.name,), (1.0,), d.low, d.high) for d in all_domains if d.bounded]
    for role in (True, False):
        tied = [d for d in all_domains if not d.bounded and d.pretraining == role]
        if tied:
            total = sum(d.weight for d in tied)
            parts.append(
                _Part(tuple(d.name for d in tied), tuple(d.weight / total for d in tied), 0.0, 1.0)
            )
    return parts


def search_dimensions(spec: SweepSpec) -> int:
    """How many uniform numbers one searched mix takes (free coordinates less one)."""
    return max(sum(p.high > p.low for p in _parts(spec)) - 1, 0)


def searched_mix(spec: SweepSpec, u: Sequence[float]) -> dict[str, float]:
    """The mix of ``search_dimensions(spec)`` uniform numbers in [0, 1], within every bound."""
    parts = _parts(spec)
    free = [p for p in parts if p.high > p.low]
    if len(u) != max(len(free) - 1, 0):
        raise ValueError(f"{len(u)} numbers given for {len(free)} free coordinates")
    room = 1.0 - math.fsum(p.low for p in parts if p.high <= p.low)
    point = _stick_breaking(u, len(free))
    lows, highs = [p.low for p in free], [p.high for p in free]
    budget = max(room - math.fsum(lows), 0.0)
    values = project(
        [lo + budget * x for lo, x in zip(lows, point, strict=True)], lows, highs, room
    )
    shares = {id(p): v for p, v in zip(free, values, strict=True)}
    mix: dict[str, float] = {}
    for part in parts:
        value = shares.get(id(part), part.low)
        for name, weight in zip(part.names, part.weights, strict=True):
            mix[name] = value * weight
    return {d.name: mix[d.name] for d in domains(spec)}


def _stick_breaking(u: Sequence[float], n: int) -> list[float]:
    # Stick i takes a Beta(1, n-1-i) fraction of what is left (inverse CDF of u): uniform u give
    # a uniform (Dirichlet(1, ..., 1)) point on the simplex.
    point, left = [], 1.0
    for i, ui in enumerate(u):
        piece = left * (1.0 - (1.0 - min(max(ui, 0.0), 1.0)) ** (1.0 / (n - 1 - i)))
        point.append(piece)
        left -= piece
    return [*point, max(left, 0.0)]


def project(
    values: Sequence[float], lows: Sequence[float], highs: Sequence[float], total: float = 1.0
) -> list[float]:
    """The point ``clip(values - tau, lows, highs)`` summing to ``total``: the Euclidean
    projection onto the bounded simplex (needs ``sum(lows) <= total <= sum(highs)``)."""

    def clipped(tau: float) -> list[float]:
        return [min(max(v - tau, lo), hi) for v, lo, hi in zip(values, lows, highs, strict=True)]

    # The clipped sum falls as tau grows: all at `highs` at `below`, all at `lows` at `above`.
    below = min(v - hi for v, hi in zip(values, highs, strict=True))
    above = max(v - lo for v, lo in zip(values, lows, strict=True))
    for _ in range(200):
        middle = 0.5 * (below + above)
        if math.fsum(clipped(middle)) > total:
            below = middle
        else:
            above = middle
    return clipped(0.5 * (below + above))


def check_mix_spec(spec: SweepSpec) -> None:
    """The rules of k-domain mixes over the whole spec (the field rules live on the fields).

    Raises:
        ValueError: naming the field at fault and what to change.
    """
    all_domains = domains(spec)
    mixing = spec.mixes is not None or spec.mix_search is not None
    if not mixing:
        bounded = [d.field for d in all_domains if d.bounded]
        if bounded:
            raise ValueError(
                f"{', '.join(repr(f) for f in bounded)} set 'min', 'max' or 'share', which bound "
                "the mixes of 'mixes' or 'mix_search'; with 'ratios' the sets split by 'weight'"
            )
        return
    if spec.trajectory is not None and spec.mix_search is not None:
        raise ValueError(
            "'trajectory' runs on listed candidates: give 'mixes' instead of 'mix_search' (or "
            "leave 'trajectory' out)"
        )
    lows = math.fsum(d.low for d in all_domains)
    highs = math.fsum(d.high for d in all_domains)
    if lows > 1.0 + MIX_SUM_TOLERANCE:
        raise ValueError(f"the sets' 'min'/'share' sum to {lows:g}, above 1: no mix can meet them")
    if highs < 1.0 - MIX_SUM_TOLERANCE:
        raise ValueError(f"the sets' 'max'/'share' sum to {highs:g}, below 1: no mix can meet them")
    if spec.mixes is not None:
        _check_listed(spec.mixes, all_domains)
    elif search_dimensions(spec) == 0:
        raise ValueError(
            "'mix_search' has nothing to search: the bounds fix every share; list the mix in "
            "'mixes', or widen a 'min'/'max'"
        )


def _check_listed(mixes: Sequence[Mapping[str, float]], all_domains: Sequence[Domain]) -> None:
    by_name = {d.name: d for d in all_domains}
    seen: set[tuple[float, ...]] = set()
    for i, mix in enumerate(mixes):
        unknown = sorted(set(mix) - set(by_name))
        if unknown:
            raise ValueError(
                f"'mixes[{i}]' names {', '.join(map(repr, unknown))}, which is no pre-training "
                f"source or fine-tuning set (those are: {', '.join(by_name)})"
            )
        for name, d in by_name.items():
            weight = mix.get(name, 0.0)
            if not d.low - _BOUND_TOLERANCE <= weight <= d.high + _BOUND_TOLERANCE:
                raise ValueError(
                    f"'mixes[{i}]' gives {name!r} {weight:g}, outside its bounds "
                    f"[{d.low:g}, {d.high:g}] ('{d.field}')"
                )
        key = tuple(round(mix.get(name, 0.0), 9) for name in by_name)
        if key in seen:
            raise ValueError(f"'mixes[{i}]' repeats an earlier mix; list each candidate once")
        seen.add(key)


def omit_unset(dump: dict[str, Any]) -> dict[str, Any]:
    """A spec's JSON without the k-domain fields left unset, so a spec that uses none of them
    keeps the canonical JSON (and the digest) it had before they existed."""
    out = {k: v for k, v in dump.items() if not (k in ("mixes", "mix_search") and v is None)}
    for group in ("pretraining", "finetuning"):
        refs = out.get(group)
        if isinstance(refs, dict):
            out[group] = _omit_bounds(refs)
        elif isinstance(refs, list):
            out[group] = [_omit_bounds(ref) for ref in refs]
    return out


def _omit_bounds(ref: dict[str, Any]) -> dict[str, Any]:
    # A fine-tuning set's 'weight' is never None; a pre-training source's is when left unset.
    return {k: v for k, v in ref.items() if not (k in _MIX_FIELDS and v is None)}


_MIX_FIELDS = frozenset({"min", "max", "share", "weight"})


__all__ = [
    "MIX_SUM_TOLERANCE",
    "Candidate",
    "Domain",
    "MixBounds",
    "MixSearch",
    "MixWeights",
    "PretrainingMix",
    "check_mix_spec",
    "domains",
    "explicit_mix",
    "omit_unset",
    "pretraining_share",
    "project",
    "ratio_weights",
    "search_dimensions",
    "searched_mix",
]
