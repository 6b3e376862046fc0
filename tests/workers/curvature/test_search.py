"""The line search on closed-form line functions: brackets, statuses, bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from workers.curvature import CurvatureError, SearchMethod, critical_lr

pytestmark = pytest.mark.unit

METHODS: list[SearchMethod] = ["bisect", "quadratic"]


def _quadratic(a: float, b: float, loss0: float = 2.0):  # type: ignore[no-untyped-def]
    return lambda eta: loss0 - a * eta + b * eta * eta


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", range(20))
def test_bracket_holds_true_root(method: SearchMethod, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = 10 ** rng.uniform(-3, 3), 10 ** rng.uniform(-3, 3)
    cubic = rng.uniform(0.0, 0.3) * b * b / a  # a mild non-quadratic term
    true = (-b + math.sqrt(b * b + 4 * cubic * a)) / (2 * cubic) if cubic > 0 else a / b
    guess = true * 10 ** rng.uniform(-3, 3)
    r = critical_lr(
        lambda e: 2.0 - a * e + b * e * e + cubic * e**3,
        loss0=2.0,
        lr_guess=guess,
        method=method,
    )
    assert r.status == "ok"
    assert r.lower <= true <= r.upper
    assert 1 - r.lower / r.upper <= 1 / 16
    assert r.eta == pytest.approx((r.lower + r.upper) / 2)
    assert r.sharpness == pytest.approx(2 / r.eta)
    assert r.forwards == len(r.probes)


@pytest.mark.parametrize("method", METHODS)
def test_warm_start_is_cheap(method: SearchMethod) -> None:
    # eta_c = a/b = 0.5; a warm start 3% off.
    r = critical_lr(_quadratic(1.0, 2.0), loss0=2.0, lr_guess=0.515, method=method)
    assert r.lower <= 0.5 <= r.upper
    assert r.forwards <= (6 if method == "bisect" else 3)


@pytest.mark.parametrize("method", METHODS)
def test_ascent_increases_immediately(method: SearchMethod) -> None:
    r = critical_lr(lambda e: 1.0 + e, loss0=1.0, lr_guess=1e-3, method=method)
    assert r.status == "increases_immediately"
    assert r.sharpness == math.inf and r.eta == 0.0 and r.lower == 0.0
    assert r.upper <= 1e-3 * 2.0**-40 * 1.0001


@pytest.mark.parametrize("method", METHODS)
def test_ascent_rounding_to_unchanged_loss(method: SearchMethod) -> None:
    # Tiny steps round to exactly L0 in float32: ties are not increases, but no probe descends.
    loss_at = lambda e: float(np.float32(1.0) + np.float32(e))  # noqa: E731
    r = critical_lr(loss_at, loss0=1.0, lr_guess=1e-3, method=method)
    assert any(loss == 1.0 for _, loss in r.probes)
    assert r.status == "increases_immediately"
    assert r.sharpness == math.inf


@pytest.mark.parametrize("method", METHODS)
def test_exact_root_hit_is_ok(method: SearchMethod) -> None:
    # The first probe lands on the root (loss exactly L0); the search must still report ok.
    r = critical_lr(_quadratic(1.0, 2.0), loss0=2.0, lr_guess=0.5, method=method)
    assert r.status == "ok" and r.lower <= 0.5 <= r.upper


@pytest.mark.parametrize("method", METHODS)
def test_never_rising_is_no_increase(method: SearchMethod) -> None:
    r = critical_lr(lambda e: 1.0 - e, loss0=1.0, lr_guess=1e-3, method=method)
    assert r.status == "no_increase"
    assert r.upper == math.inf
    assert r.eta == r.lower == pytest.approx(1e-3 * 2.0**40)
    assert r.sharpness == pytest.approx(2 / r.lower)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_is_increase(method: SearchMethod, bad: float) -> None:
    # Finite loss decreases until 0.3, then the forward overflows: eta_c = 0.3.
    r = critical_lr(lambda e: 1.0 - e if e < 0.3 else bad, loss0=1.0, lr_guess=0.01, method=method)
    assert r.status == "ok"
    assert r.lower < 0.3 <= r.upper
    assert 1 - r.lower / r.upper <= 1 / 16


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr_guess": 0.0}, "lr_guess"),
        ({"lr_guess": -1.0}, "lr_guess"),
        ({"lr_guess": math.nan}, "lr_guess"),
        ({"lr_guess": math.inf}, "lr_guess"),
        ({"tol": 0.0}, "tol"),
        ({"tol": 1.0}, "tol"),
        ({"loss0": math.nan}, "loss0"),
        ({"max_steps": 0}, "max_steps"),
        ({"method": "newton"}, "method"),
    ],
)
def test_bad_inputs(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"loss0": 1.0, "lr_guess": 1e-3} | kwargs
    with pytest.raises(CurvatureError, match=match):
        critical_lr(lambda e: 1.0, **args)  # type: ignore[arg-type]


def test_quadratic_beats_bisect_on_average() -> None:
    rng = np.random.default_rng(0)
    counts: dict[str, list[int]] = {"bisect": [], "quadratic": []}
    for _ in range(100):
        a, b = 10 ** rng.uniform(-2, 2), 10 ** rng.uniform(-2, 2)
        guess = a / b * 10 ** rng.uniform(-0.3, 0.3)  # warm-ish starts
        for method in METHODS:
            counts[method].append(
                critical_lr(_quadratic(a, b), loss0=2.0, lr_guess=guess, method=method).forwards
            )
    assert np.median(counts["quadratic"]) < np.median(counts["bisect"])
    assert max(counts["quadratic"]) <= max(counts["bisect"]) + 2


def _tied_at_tiny_steps(a: float, b: float, loss0: float):  # type: ignore[no-untyped-def]
    """A float32 descent line whose tiny steps come out one ulp *above* L0 (rounding noise)."""
    ulp = float(np.spacing(np.float32(loss0)))

    def loss_at(eta: float) -> float:
        if a * eta < ulp:
            return float(np.nextafter(np.float32(loss0), np.float32(np.inf)))
        return float(np.float32(loss0 - a * eta + b * eta * eta))

    return loss_at


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("slope", [None, -1.0])
def test_one_ulp_tie_at_a_tiny_guess_is_not_an_ascent(
    method: SearchMethod, slope: float | None
) -> None:
    # eta_c = a/b = 0.5; starting 9 orders of magnitude below it, every probe near the guess
    # ties L0 up to one ulp, which is rounding, not an increase.
    r = critical_lr(
        _tied_at_tiny_steps(1.0, 2.0, 3.0), loss0=3.0, lr_guess=1e-9, method=method, slope=slope
    )
    assert r.status == "ok"
    assert r.lower <= 0.5 <= r.upper
    assert 1 - r.lower / r.upper <= 1 / 16
    assert r.forwards == len(r.probes)


@pytest.mark.parametrize("method", METHODS)
def test_confirmed_ascent_still_increases_immediately(method: SearchMethod) -> None:
    # An ascent whose tiny steps also tie within an ulp: the walk up confirms a clear increase.
    ulp = float(np.spacing(np.float32(3.0)))
    loss_at = lambda e: float(np.float32(3.0 + e)) if e > ulp else 3.0 + ulp  # noqa: E731
    r = critical_lr(loss_at, loss0=3.0, lr_guess=1e-9, method=method)
    assert r.status == "increases_immediately"
    assert any(loss > 3.0 + 4 * ulp for _, loss in r.probes)


def test_flat_within_rounding_up_to_the_cap_is_no_increase() -> None:
    ulp = float(np.spacing(np.float32(3.0)))
    r = critical_lr(lambda e: 3.0 + ulp, loss0=3.0, lr_guess=1e-3, max_steps=8)
    assert r.status == "no_increase"
    assert r.lower == pytest.approx(1e-3 * 2.0**8)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("slope_error", [0.0, 0.3, -0.3])
def test_slope_keeps_the_bracket(seed: int, slope_error: float) -> None:
    # A slope that is off by 30% (or a non-quadratic line) may cost probes, never the bracket.
    rng = np.random.default_rng(seed)
    a, b = 10 ** rng.uniform(-3, 3), 10 ** rng.uniform(-3, 3)
    cubic = rng.uniform(0.0, 0.3) * b * b / a
    true = (-b + math.sqrt(b * b + 4 * cubic * a)) / (2 * cubic) if cubic > 0 else a / b
    r = critical_lr(
        lambda e: 2.0 - a * e + b * e * e + cubic * e**3,
        loss0=2.0,
        lr_guess=true * 10 ** rng.uniform(-3, 3),
        slope=-a * (1 + slope_error),
    )
    assert r.status == "ok"
    assert r.lower <= true <= r.upper
    assert 1 - r.lower / r.upper <= 1 / 16


def test_slope_closes_a_warm_start_in_two_probes() -> None:
    # eta_c = 0.5. With the slope, one probe gives the line; a guess within one tol-width of the
    # root (either side) then needs exactly one more probe. Without it, the same start costs more.
    for guess in (0.48, 0.515, 0.52):
        with_slope = critical_lr(_quadratic(1.0, 2.0), loss0=2.0, lr_guess=guess, slope=-1.0)
        assert with_slope.lower <= 0.5 <= with_slope.upper
        assert with_slope.forwards == 2
    rng = np.random.default_rng(1)
    counts: dict[bool, list[int]] = {True: [], False: []}
    for _ in range(100):
        a, b = 10 ** rng.uniform(-2, 2), 10 ** rng.uniform(-2, 2)
        guess = a / b * 10 ** rng.uniform(-0.1, 0.1)  # warm starts within ~25%
        for known in (True, False):
            r = critical_lr(
                _quadratic(a, b), loss0=2.0, lr_guess=guess, slope=-a if known else None
            )
            counts[known].append(r.forwards)
    assert np.median(counts[True]) < np.median(counts[False])
    assert np.median(counts[True]) <= 3


def test_bad_slope() -> None:
    with pytest.raises(CurvatureError, match="slope"):
        critical_lr(lambda e: 1.0, loss0=1.0, lr_guess=1e-3, slope=math.nan)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("guess", [1e-9, 1e-6, 1e-3])
def test_descent_within_rounding_is_a_tie_whatever_the_start(
    method: SearchMethod, guess: float
) -> None:
    # A float32 loss that rises along d, except that rounding lowers it by one ulp at tiny steps:
    # that dip is no descent, so every starting guess gives the same verdict.
    loss0 = float(np.float32(3.369))
    ulp = float(np.spacing(np.float32(loss0)))

    def loss_at(eta: float) -> float:
        if eta < 1e-7:
            return loss0 - ulp
        return float(np.float32(loss0 + 0.03 * eta + 1e-6))

    r = critical_lr(loss_at, loss0=loss0, lr_guess=guess, method=method)
    assert r.status == "increases_immediately"
    assert r.sharpness == math.inf and r.eta == 0.0


def _float32_line(c: float, loss0: float):  # type: ignore[no-untyped-def]
    """A float32 loss that rises along d at rate `c` (with a little curvature): a pure ascent."""
    return lambda eta: float(np.float32(loss0 + c * eta + 5 * eta * eta))


@pytest.mark.parametrize("c", [1e-1, 1.0, 10.0, 100.0])
@pytest.mark.parametrize("guess", [4.5e-4, 1e-5])
def test_ascent_in_float32_stops_at_the_edge_of_rounding(c: float, guess: float) -> None:
    # Near the floor the probes tie L0, above it they rise: the bracket between is only the edge
    # of the rounding band, which the search no longer closes to tol (it took 13-20 forwards).
    loss0 = float(np.float32(0.9166))
    r = critical_lr(_float32_line(c, loss0), loss0=loss0, lr_guess=guess)
    assert r.status == "increases_immediately"
    assert r.sharpness == math.inf and r.eta == 0.0
    assert r.forwards <= 11


@pytest.mark.parametrize("depth_ulps", [8, 64, 4096])
def test_a_descent_behind_a_tie_is_still_found_and_closed(depth_ulps: int) -> None:
    # A descent too shallow to show at the first probe below the guess (a tie there), clear at
    # steps between that tie and the first increase: the search must find it and close the
    # bracket to tol, not stop at the tie.
    loss0 = float(np.float32(3.0))
    ulp = float(np.spacing(np.float32(loss0)))
    eta_c = 1e-6
    a = 4 * depth_ulps * ulp / eta_c  # deepest point, at eta_c / 2, is depth_ulps ulps below L0
    b = a / eta_c

    def loss_at(eta: float) -> float:
        return float(np.float32(loss0 - a * eta + b * eta * eta))

    r = critical_lr(loss_at, loss0=loss0, lr_guess=1e-3)
    assert r.status == "ok"
    assert r.lower <= eta_c * 1.0001 and eta_c * 0.9999 <= r.upper
    assert 1 - r.lower / r.upper <= 1 / 16


def _float32_quadratic(eta_c: float, depth_ulps: float, loss0: float = 2.25):  # type: ignore[no-untyped-def]
    """A float32 loss with its root at `eta_c` whose deepest point (at eta_c / 2) lies
    `depth_ulps` ulps below L0: near the root every probe ties L0 within rounding."""
    l0 = float(np.float32(loss0))
    a = 4 * depth_ulps * float(np.spacing(np.float32(l0))) / eta_c
    return l0, lambda eta: float(np.float32(l0 - a * eta + a / eta_c * eta * eta))


def test_a_known_descent_spares_the_confirming_probe() -> None:
    # A warm start 1% off a root where the loss only ties L0: the search closes the bracket in
    # two probes, then spends a third at lower/2 to see a descent. The loss change at the
    # planned rate (below the root, clearly lower) shows that descent for free.
    loss0, loss_at = _float32_quadratic(eta_c=1e-3, depth_ulps=12)
    lr = 3e-4
    alone = critical_lr(loss_at, loss0=loss0, lr_guess=1.01e-3)
    known = critical_lr(loss_at, loss0=loss0, lr_guess=1.01e-3, known=[(lr, loss_at(lr))])
    for r in (alone, known):
        assert r.status == "ok" and 1 - r.lower / r.upper <= 1 / 16
        # Rounding blurs the root itself: float32 losses within ~1% of it tie L0.
        assert r.upper >= 0.98e-3 and r.lower <= 1.02e-3
    assert alone.forwards == 3
    assert known.forwards == 2
    assert known.probes[0] == (lr, loss_at(lr))  # the known point leads, uncounted
    assert len(known.probes) == known.forwards + 1


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", range(10))
def test_known_points_keep_the_bracket(method: SearchMethod, seed: int) -> None:
    # Known points below, near or above the root, and guesses on either side of them: the
    # bracket is still right, and the forwards count only what the search evaluated.
    rng = np.random.default_rng(seed)
    a, b = 10 ** rng.uniform(-2, 2), 10 ** rng.uniform(-2, 2)
    true = a / b
    line = _quadratic(a, b)
    at = true * 10 ** rng.uniform(-3, 0.5)
    calls: list[float] = []

    def loss_at(eta: float) -> float:
        calls.append(eta)
        return line(eta)

    r = critical_lr(
        loss_at,
        loss0=2.0,
        lr_guess=true * 10 ** rng.uniform(-1, 1),
        method=method,
        known=[(at, line(at))],
    )
    assert r.status == "ok"
    assert r.lower <= true <= r.upper and 1 - r.lower / r.upper <= 1 / 16
    assert r.forwards == len(calls) == len(r.probes) - 1
    assert at not in calls


def test_a_known_increase_bounds_the_search_from_above() -> None:
    # The planned rate beyond the root: the guess above it is never probed.
    line = _quadratic(1.0, 2.0)  # eta_c = 0.5
    calls: list[float] = []

    def loss_at(eta: float) -> float:
        calls.append(eta)
        return line(eta)

    r = critical_lr(loss_at, loss0=2.0, lr_guess=2.0, known=[(0.8, line(0.8))])
    assert r.status == "ok" and r.lower <= 0.5 <= r.upper
    assert all(eta < 0.8 for eta in calls)


@pytest.mark.parametrize("eta", [0.0, -1e-3, math.inf, math.nan])
def test_a_known_point_needs_a_positive_step(eta: float) -> None:
    with pytest.raises(CurvatureError, match="known probe"):
        critical_lr(lambda e: 1.0, loss0=1.0, lr_guess=1e-3, known=[(eta, 1.0)])
