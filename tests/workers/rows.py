"""A measurement row as the recommendation rules read it, for tests that build rows by hand."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Row:
    """The fields of a stored measurement that `workers.recommend` and `workers.rate_region`
    read (`MeasurementRow`, `RateRow`)."""

    ratio: float
    eval_set: str
    role: str
    eta_c: float | None
    eta_c_low: float | None
    loss_change: float | None
    status: str = "ok"
    spread: float | None = 1.2
    rate_loss_changes: list[list[float]] | None = None  # [[rate, change], ...] with a rate grid
