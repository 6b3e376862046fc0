"""Reusing finished sweeps (issue 11, part 5): the request that adds candidates to one, and the
comparison of two.

Plain pydantic models, read by the API (which fills them) and the client (which parses them).
Warm starts need no model of their own: ``SweepSpec.warm_start_from`` names the earlier sweep.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from contract.quantities import Ratio
from contract.recommendation import Recommendation


class AddCandidates(BaseModel):
    """New candidate ratios for a finished sweep of listed ratios."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_extra={"examples": [{"ratios": [0.3, 0.4]}]}
    )

    ratios: list[Ratio] = Field(
        min_length=1,
        max_length=1024,
        description="Pre-training ratios to measure as well (0 to 1), each not yet a candidate "
        "of the sweep. The sweep's model, data, batches and gradients are reused; each new "
        "ratio costs its own searches only (and its trajectory, when the sweep runs them).",
    )

    @field_validator("ratios")
    @classmethod
    def _once(cls, value: list[float]) -> list[float]:
        if len(set(value)) != len(value):
            raise ValueError("'ratios' holds a value twice; list each new candidate once")
        return value


class SetSide(BaseModel):
    """One evaluation set at one ratio, in one sweep (None where that sweep has no such row)."""

    eta_c: float | None = Field(description="Critical learning rate.")
    eta_c_low: float | None = Field(description="Its lower confidence bound.")
    loss_change: float | None = Field(description="One-step loss change at the sweep's rate.")
    status: str | None = Field(description="How the search ended.")


class RatioComparison(BaseModel):
    """One ratio measured by either sweep, side by side per evaluation set."""

    ratio: float = Field(description="Fraction of pre-training tokens in the mix.")
    sets: dict[str, dict[str, SetSide | None]] = Field(
        description="Per evaluation set name, {'a': ..., 'b': ...}: each sweep's row, or null "
        "where that sweep did not measure this ratio or has no set of that name."
    )
    in_basin_a: bool | None = Field(
        description="Sweep a's first-step verdict at this ratio (null: not measured by a)."
    )
    in_basin_b: bool | None = Field(
        description="Sweep b's first-step verdict at this ratio (null: not measured by b)."
    )


class SpecDifference(BaseModel):
    """A spec field whose value differs between the two sweeps."""

    field: str = Field(description="Dotted path of the field, e.g. 'optimizer.betas'.")
    a: Any = Field(description="Sweep a's value (null: absent).")
    b: Any = Field(description="Sweep b's value (null: absent).")


class SweepComparison(BaseModel):
    """Two sweeps of one tenant side by side."""

    a: str = Field(description="Id of sweep a.")
    b: str = Field(description="Id of sweep b.")
    state_a: str = Field(description="Sweep a's state.")
    state_b: str = Field(description="Sweep b's state.")
    ratios: list[RatioComparison] = Field(description="Every ratio either sweep measured.")
    recommendation_a: Recommendation | None = Field(
        description="Sweep a's recommendation (null until it has succeeded)."
    )
    recommendation_b: Recommendation | None = Field(
        description="Sweep b's recommendation (null until it has succeeded)."
    )
    spec_differences: list[SpecDifference] = Field(
        description="Every spec field whose value differs, by dotted path."
    )


def spec_differences(
    a: dict[str, Any], b: dict[str, Any], prefix: str = ""
) -> list[SpecDifference]:
    """The leaves of two JSON objects that differ, by dotted path (lists compared whole)."""
    found: list[SpecDifference] = []
    for key in sorted(a.keys() | b.keys()):
        left, right = a.get(key), b.get(key)
        path = f"{prefix}{key}"
        if isinstance(left, dict) and isinstance(right, dict):
            found += spec_differences(left, right, f"{path}.")
        elif left != right:
            found.append(SpecDifference(field=path, a=left, b=right))
    return found


__all__ = [
    "AddCandidates",
    "RatioComparison",
    "SetSide",
    "SpecDifference",
    "SweepComparison",
    "spec_differences",
]
