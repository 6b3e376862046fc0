"""Statistics of eta_c and lambda_c over several evaluation batches (method.md §4, §7).

`eta_c` spans orders of magnitude across settings and, with small batches, across batches of one
setting (method.md §7: 5.7e-7 ... 5.4e-4). So the centre and the confidence interval are taken in
log space: the geometric mean and a Student-t interval of `log eta_c`, mapped back with `exp`. The
interval is then multiplicative, never crosses zero, and maps exactly onto `lambda_c = 2 / eta_c`
(whose interval is `2 / upper ... 2 / lower`). The arithmetic mean and standard deviation are
reported too.

Non-`ok` results are kept, conservatively: a `no_increase` batch enters with its lower bound (it
can only pull the estimate down), and any `increases_immediately` batch sets the lower confidence
bound of `eta_c` to 0 (`lambda_c`'s upper to inf). The spread is flagged as wide (and a
`SpreadWarning` is issued) when batches disagree: max/min ratio above `max_ratio` (default 2),
coefficient of variation above `max_cv` (default 0.5), or any non-`ok` batch.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from workers.curvature.errors import CurvatureError
from workers.curvature.search import CriticalLR

__all__ = ["SharpnessStats", "SpreadWarning", "eta_estimate", "summarize", "t_quantile"]


class SpreadWarning(UserWarning):
    """The batches of one measurement disagree; use larger batches or more of them."""


def _t_cdf(x: float, dof: int) -> float:
    """Student-t CDF by Simpson's rule on the density (enough for confidence intervals)."""
    if x < 0:
        return 1 - _t_cdf(-x, dof)
    log_c = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)
    n = 2000
    xs = np.linspace(0.0, x, n + 1)
    dens = np.exp(log_c - (dof + 1) / 2 * np.log1p(xs * xs / dof))
    h = x / n
    integral = h / 3 * (dens[0] + dens[-1] + 4 * dens[1:-1:2].sum() + 2 * dens[2:-1:2].sum())
    return 0.5 + float(integral)


def t_quantile(p: float, dof: int) -> float:
    """The p-quantile of Student's t with `dof` degrees of freedom (0.5 < p < 1)."""
    if not 0.5 < p < 1 or dof < 1:
        raise CurvatureError(f"t_quantile needs 0.5 < p < 1 and dof >= 1, got {p}, {dof}")
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, dof) < p:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, dof) < p else (lo, mid)
    return (lo + hi) / 2


@dataclass(frozen=True)
class SharpnessStats:
    """eta_c and lambda_c over batches.

    Attributes:
        n: Number of batches.
        statuses: Count of each status.
        eta_geomean: Geometric mean of eta_c (the centre used for decisions).
        eta_mean: Arithmetic mean of eta_c.
        eta_std: Sample standard deviation of eta_c (0 for one batch).
        eta_ci: Confidence interval of eta_c (log-space t-interval; (0, inf) for one batch).
        lambda_mean: Arithmetic mean of lambda_c = 2/eta_c (inf if any batch increased at once).
        lambda_ci: Confidence interval of lambda_c, `2 / eta_ci` reversed.
        ratio: max/min of eta_c over batches.
        cv: Coefficient of variation of eta_c.
        wide: Whether the spread is wide (see module docstring).
        message: Why it is wide, and what to change; None when not wide.
    """

    n: int
    statuses: dict[str, int]
    eta_geomean: float
    eta_mean: float
    eta_std: float
    eta_ci: tuple[float, float]
    lambda_mean: float
    lambda_ci: tuple[float, float]
    ratio: float
    cv: float
    wide: bool
    message: str | None


def summarize(
    results: Sequence[CriticalLR],
    *,
    confidence: float = 0.95,
    max_ratio: float = 2.0,
    max_cv: float = 0.5,
    warn: bool = True,
) -> SharpnessStats:
    """Mean, spread and confidence interval of eta_c and lambda_c over batches.

    Args:
        results: One search result per evaluation batch (same setting).
        confidence: Two-sided confidence level of the intervals.
        max_ratio: Flag when max/min eta_c exceeds this.
        max_cv: Flag when std/mean of eta_c exceeds this.
        warn: Issue a `SpreadWarning` when the spread is wide.
    """
    if not results:
        raise CurvatureError("summarize needs at least one result")
    if not 0 < confidence < 1:
        raise CurvatureError(f"confidence must lie in (0, 1), got {confidence}")
    statuses = {
        s: sum(r.status == s for r in results)
        for s in ("ok", "increases_immediately", "no_increase")
    }
    n = len(results)
    etas = np.array([r.eta for r in results], dtype=np.float64)
    immediate = statuses["increases_immediately"] > 0
    positive = etas[etas > 0]
    eta_mean = float(etas.mean())
    eta_std = float(etas.std(ddof=1)) if n > 1 else 0.0
    cv = eta_std / eta_mean if eta_mean > 0 else math.inf
    ratio = float(positive.max() / positive.min()) if len(positive) == n else math.inf
    lambda_mean = float(np.mean(2 / etas)) if not immediate else math.inf
    if len(positive) == 0:
        geomean, ci = 0.0, (0.0, 0.0)
    else:
        logs = np.log(positive)
        geomean = float(np.exp(logs.mean()))
        if len(positive) > 1:
            half = t_quantile(0.5 + confidence / 2, len(positive) - 1) * float(logs.std(ddof=1))
            half /= math.sqrt(len(positive))
            ci = (float(np.exp(logs.mean() - half)), float(np.exp(logs.mean() + half)))
        else:
            ci = (0.0, math.inf)
        if immediate:
            ci = (0.0, ci[1])
    lambda_ci = (2 / ci[1] if ci[1] > 0 else math.inf, 2 / ci[0] if ci[0] > 0 else math.inf)
    reasons = []
    if ratio > max_ratio:
        reasons.append(f"eta_c varies by a factor {ratio:.3g} across batches (> {max_ratio})")
    if cv > max_cv:
        reasons.append(f"coefficient of variation {cv:.3g} (> {max_cv})")
    if statuses["ok"] < n:
        reasons.append(f"{n - statuses['ok']} of {n} batches did not bracket eta_c ({statuses})")
    message = None
    if reasons:
        message = (
            "batches disagree: " + "; ".join(reasons) + ". Use larger evaluation and direction "
            "batches (tens of thousands of tokens) or more batches before trusting this value."
        )
        if warn:
            warnings.warn(message, SpreadWarning, stacklevel=2)
    return SharpnessStats(
        n=n,
        statuses=statuses,
        eta_geomean=geomean,
        eta_mean=eta_mean,
        eta_std=eta_std,
        eta_ci=ci,
        lambda_mean=lambda_mean,
        lambda_ci=lambda_ci,
        ratio=ratio,
        cv=cv,
        wide=bool(reasons),
        message=message,
    )


def eta_estimate(
    results: Sequence[CriticalLR], stats: SharpnessStats
) -> tuple[float | None, float | None, float | None]:
    """Point estimate and confidence interval of eta_c over the batches of one measurement.

    The geometric mean and its log-space interval when every batch found a positive eta_c. When
    some batches rose at once (eta_c = 0) a geometric mean would silently drop them, so the point
    is the median over all batches (0 when most rose at once) and the lower bound is 0. With a
    single batch there is no interval: both bounds are that batch's value.

    Args:
        results: The batches' searches.
        stats: ``summarize(results)``.

    Returns:
        ``(point, low, high)``; ``high`` is None when no finite upper bound exists.
    """
    etas = [r.eta for r in results]
    if any(r.status == "increases_immediately" for r in results):
        point = float(statistics.median(etas))
        top = max(etas)
        return point, 0.0, top if math.isfinite(top) else None
    if len(results) == 1:
        return etas[0], etas[0], etas[0]
    low, high = stats.eta_ci
    return stats.eta_geomean, low, high if math.isfinite(high) else None
