"""Statistics over batches: log-space intervals, spread flags, non-ok results."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from workers.curvature import CriticalLR, SpreadWarning, eta_estimate, summarize, t_quantile

pytestmark = pytest.mark.unit


def _ok(eta: float) -> CriticalLR:
    return CriticalLR(eta * 0.97, eta * 1.03, eta, 2 / eta, 6, "ok")


@pytest.mark.parametrize(("dof", "expected"), [(1, 12.7062), (4, 2.7764), (30, 2.0423)])
def test_t_quantile(dof: int, expected: float) -> None:
    assert t_quantile(0.975, dof) == pytest.approx(expected, rel=1e-4)


def test_log_space_interval_closed_form() -> None:
    etas = [1e-5, 1.2e-5, 0.9e-5, 1.1e-5]
    s = summarize([_ok(e) for e in etas])
    logs = np.log(etas)
    half = t_quantile(0.975, 3) * logs.std(ddof=1) / 2
    assert s.eta_geomean == pytest.approx(math.exp(logs.mean()))
    assert s.eta_ci == pytest.approx((math.exp(logs.mean() - half), math.exp(logs.mean() + half)))
    assert s.lambda_ci == pytest.approx((2 / s.eta_ci[1], 2 / s.eta_ci[0]))
    assert s.eta_mean == pytest.approx(np.mean(etas))
    assert s.eta_std == pytest.approx(np.std(etas, ddof=1))
    assert s.lambda_mean == pytest.approx(np.mean([2 / e for e in etas]))
    assert not s.wide and s.message is None


def test_wide_spread_warns() -> None:
    with pytest.warns(SpreadWarning, match="larger"):
        s = summarize([_ok(5.7e-7), _ok(5.4e-4), _ok(2e-5)])
    assert s.wide and s.ratio > 2


def test_increases_immediately_sets_conservative_bounds() -> None:
    immediate = CriticalLR(0.0, 1e-9, 0.0, math.inf, 41, "increases_immediately")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpreadWarning)
        s = summarize([_ok(1e-5), _ok(1.1e-5), immediate])
    assert s.eta_ci[0] == 0.0 and s.lambda_ci[1] == math.inf and s.lambda_mean == math.inf
    assert s.statuses["increases_immediately"] == 1 and s.wide


def _result(eta: float, status: str = "ok") -> CriticalLR:
    return CriticalLR(
        lower=eta * 0.97,
        upper=eta * 1.03 if eta else 1e-12,
        eta=eta,
        sharpness=2 / eta if eta else math.inf,
        forwards=5,
        status=status,  # type: ignore[arg-type]
    )


def test_estimate_when_all_batches_found_an_eta() -> None:
    results = [_result(1e-4), _result(2e-4), _result(1.5e-4), _result(1.2e-4)]
    point, low, high = eta_estimate(results, summarize(results, warn=False))
    assert point == pytest.approx((1e-4 * 2e-4 * 1.5e-4 * 1.2e-4) ** 0.25)
    assert low is not None and high is not None and low < point < high


def test_estimate_keeps_batches_that_rise_at_once() -> None:
    results = [_result(0.0, "increases_immediately")] * 3 + [_result(2e-4)]
    point, low, high = eta_estimate(results, summarize(results, warn=False))
    assert point == 0.0 and low == 0.0 and high == 2e-4


def test_estimate_of_one_batch_has_no_interval() -> None:
    results = [_result(3e-4)]
    assert eta_estimate(results, summarize(results, warn=False)) == (3e-4, 3e-4, 3e-4)
