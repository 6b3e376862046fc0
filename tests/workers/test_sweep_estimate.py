"""How a ratio's batches become one eta_c and its interval (workers/sweep.py)."""

from __future__ import annotations

import math

import pytest

from workers.curvature import CriticalLR, summarize
from workers.sweep import _estimate


def result(eta: float, status: str = "ok") -> CriticalLR:
    return CriticalLR(
        lower=eta * 0.97,
        upper=eta * 1.03 if eta else 1e-12,
        eta=eta,
        sharpness=2 / eta if eta else math.inf,
        forwards=5,
        status=status,  # type: ignore[arg-type]
    )


def test_all_batches_found_an_eta() -> None:
    results = [result(1e-4), result(2e-4), result(1.5e-4), result(1.2e-4)]
    point, low, high = _estimate(results, summarize(results, warn=False))
    assert point == pytest.approx((1e-4 * 2e-4 * 1.5e-4 * 1.2e-4) ** 0.25)
    assert low is not None and high is not None and low < point < high


def test_batches_that_rise_at_once_are_not_dropped() -> None:
    results = [result(0.0, "increases_immediately")] * 3 + [result(2e-4)]
    point, low, high = _estimate(results, summarize(results, warn=False))
    assert point == 0.0 and low == 0.0 and high == 2e-4


def test_one_batch_has_no_interval() -> None:
    results = [result(3e-4)]
    assert _estimate(results, summarize(results, warn=False)) == (3e-4, 3e-4, 3e-4)
