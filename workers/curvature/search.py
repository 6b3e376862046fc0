"""The line search for the critical learning rate (method.md §2).

    eta_c = min { eta > 0 : L(theta - eta * d) > L(theta) },     lambda_c = 2 / eta_c

`critical_lr` searches a line function `loss_at(eta)` and keeps a bracket: `lower` is a probed step
whose loss did not exceed `L0 = L(theta)` (or 0), `upper` a probed step whose loss did (or inf). A
non-finite loss counts as an increase; a loss equal to `L0` does not. Two methods:

- `"bisect"`, the paper's baseline: double or halve from `lr_guess` until the loss changes side
  (at most `max_steps` times), then bisect until `1 - lower/upper <= tol`.
- `"quadratic"` (default): the same bracket, with probes placed by the quadratic model
  `L(eta) = L0 - a*eta + b*eta^2`. Its slope form `y(eta) = (L(eta) - L0)/eta = -a + b*eta` is a
  straight line whose zero is `eta_c = a/b`, so two probes give the model and the root follows by
  linear interpolation (regula falsi on `y`; exact for a quadratic loss). Each model probe sits a
  small margin to one side of the predicted root so that the next probe can close the bracket to
  `tol` in one step. Safeguards: every probe lies strictly inside the current bracket, two
  consecutive surprises (the loss fell on the other side than predicted) force a bisection, and
  while no bracket exists the step grows geometrically (2, 4, 16, ...) when no model is available.
  A warm start (`lr_guess` = the last `eta_c`) first tries a step of one `tol`-width towards the
  root, which closes the bracket in two probes when `eta_c` barely moved.

A known slope (`slope=`, the derivative `dL/deta` at 0, i.e. `-g.d` from one backward pass on the
evaluation batch) is the point `(0, slope)` of that same straight line, so the first probe already
gives the model: a warm start within about one `tol`-width of the root closes in two probes. The
slope only places probes; the bracket, and so the answer, still comes from evaluated losses.

Known points (`known=`, `(eta, loss)` pairs the caller evaluated on the same line, e.g. the loss
change at the planned rate that every sweep measures) enter the bracket before the first probe and
count as probes for the model and the descent check, but not as forwards. Near the root the loss
ties L0 within rounding, so a search that closed its bracket there had to spend one more probe
(at `lower / 2`, below) to see a descent; a known descent makes that probe unnecessary, and a known
point well below the root is a point of the model's straight line (its `y` is close to the slope).
On the real-text screens of bench/science the median search was 2 forwards with it (run 10, H100)
against 4 without it (run 9, H200, a differently pre-trained model: not an A/B); on the
deterministic tiny CPU screen, with the same answers, 199 forwards against 226
(docs/evidence.md, "Known probes").

Status semantics: `increases_immediately` when even the search floor `lr_guess * 2**-max_steps`
raises the loss, or when no probe ever lowered the loss below `L0` (the probes that did not increase
it only tied `L0`, also one extra probe at `lower/2`: the descent, if any, is below the loss's
rounding resolution); `lambda_c` is then inf and `eta` 0. That verdict needs a *confirmed* increase:
a loss above `L0` by more than its rounding (`_TIE_ULPS` float32 ulps of `L0`), or a non-finite one.
When every increase seen is within rounding (a tiny starting guess, where `L` ties `L0` up to an
ulp or two), the search steps up until the loss leaves the rounding band: a clear descent restarts
the search from there (the tiny "increases" were ties), a clear increase confirms the verdict, and
a loss flat within rounding up to the cap is `no_increase`. Descents are judged the same way: a
loss below `L0` by no more than its rounding is a tie, not a descent, so a direction that ascends
but for a one-ulp dip at tiny steps is `increases_immediately` whatever the starting guess (before,
a cold start could report `ok` with an eta_c of rounding noise where a warm start reported
`increases_immediately`). The band is counted in the losses' own precision: float32 ulps when every
loss is a float32 value (a model's loss), float64 ulps otherwise. On an ascending float32 line the
probes near the floor tie L0 and those above rise: the quadratic search then bisects that bracket
geometrically and stops once it spans a factor 4 (`_settled_ascent`) instead of closing it to `tol`,
which would only place the edge of the rounding band (`tests/workers/curvature/test_search.py::
test_ascent_in_float32_stops_at_the_edge_of_rounding` holds such ascents to 11 forwards; the
old search failed it in 7 of its 8 cases).
`no_increase` when `lr_guess * 2**max_steps` still did not raise the loss: `eta = lower` is a lower
bound on `eta_c`, `sharpness = 2 / lower` an upper bound on `lambda_c`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from workers.curvature.errors import CurvatureError

__all__ = ["CriticalLR", "SearchMethod", "Status", "critical_lr", "is_increase"]

Status = Literal["ok", "increases_immediately", "no_increase"]
SearchMethod = Literal["bisect", "quadratic"]

# A loss within this many float32 ulps of L0 may be a tie blurred by rounding: it does not by
# itself prove that a direction raises the loss (it still counts as an increase in the bracket).
_TIE_ULPS = 4.0
_TIE_BRACKET = 4.0  # see _settled_ascent


@dataclass(frozen=True)
class CriticalLR:
    """The result of one critical-learning-rate search.

    Attributes:
        lower: Largest probed step that did not raise the loss (0 if none counts).
        upper: Smallest probed step that raised it (inf if none did).
        eta: The estimate of `eta_c`: `(lower + upper) / 2` when `status == "ok"`, `lower` for
            `no_increase` (a lower bound), 0 for `increases_immediately`.
        sharpness: `2 / eta` (inf for `increases_immediately`).
        forwards: Loss evaluations spent (known points excluded); `measure` adds one when it
            computed `L(theta)` itself.
        status: `"ok"`, `"increases_immediately"` or `"no_increase"`.
        probes: Every `(eta, loss)` seen, in order: the known points first, then the search's.
        loss0: `L(theta)`, the reference loss.
    """

    lower: float
    upper: float
    eta: float
    sharpness: float
    forwards: int
    status: Status
    probes: list[tuple[float, float]] = field(default_factory=list)
    loss0: float = math.nan


def is_increase(loss: float, loss0: float) -> bool:
    """Whether `loss` counts as an increase over `loss0` (non-finite losses do)."""
    return not math.isfinite(loss) or loss > loss0


class _Bracket:
    """Probes a line function and keeps the tightest valid bracket `[lo, hi]`."""

    def __init__(self, loss_at: Callable[[float], float], loss0: float) -> None:
        self.loss_at = loss_at
        self.loss0 = loss0
        self.lo, self.hi = 0.0, math.inf
        self.loss_lo, self.loss_hi = loss0, math.nan
        self.probes: list[tuple[float, float]] = []
        self.known = 0  # leading entries of `probes` the caller evaluated (`known=`): no forwards
        self.fresh = True  # the search has not placed its first probe yet

    def probe(self, eta: float) -> bool:
        return self.record(eta, float(self.loss_at(eta)))

    def record(self, eta: float, loss: float) -> bool:
        self.probes.append((eta, loss))
        if is_increase(loss, self.loss0):
            if eta < self.hi:
                self.hi, self.loss_hi = eta, loss
            return True
        if eta > self.lo:
            self.lo, self.loss_lo = eta, loss
        return False

    def start(self, lr_guess: float) -> bool:
        """Whether the search's first probe goes at `lr_guess`: once, and only where it can
        still narrow the bracket (known probes may already hold it on one side)."""
        first, self.fresh = self.fresh, False
        return first and self.lo < lr_guess < self.hi

    def closed(self, tol: float) -> bool:
        return self.lo > 0 and math.isfinite(self.hi) and 1 - self.lo / self.hi <= tol

    def slope(self, eta: float, loss: float) -> float:
        # y(eta) = (L(eta) - L0) / eta; a straight line -a + b*eta for a quadratic loss.
        return (loss - self.loss0) / eta


def _bisect(b: _Bracket, lr_guess: float, tol: float, max_steps: int) -> None:
    # Double or halve from the first probe until the loss changes side. A bracket seeded with a
    # descent (the tie walk) or known probes that hold the guess on one side start from the
    # nearest end instead, without re-probing it.
    if b.start(lr_guess):
        eta, down = lr_guess, b.probe(lr_guess)
    else:
        eta, down = (b.lo, False) if b.lo > 0 else (b.hi, True)
    for _ in range(max_steps):
        if b.lo > 0 and math.isfinite(b.hi):
            break
        eta = eta / 2 if down else eta * 2
        b.probe(eta)
    if b.lo == 0 or not math.isfinite(b.hi):
        return
    while not b.closed(tol):
        b.probe((b.lo + b.hi) / 2)


def _line_root(p1: tuple[float, float], p2: tuple[float, float]) -> float | None:
    """Zero of the straight line through two (eta, y) points, if it rises (b > 0)."""
    (e1, y1), (e2, y2) = p1, p2
    if e1 == e2 or not (math.isfinite(y1) and math.isfinite(y2)):
        return None
    slope = (y2 - y1) / (e2 - e1)
    if not slope > 0:
        return None
    root = e1 - y1 / slope
    return root if root > 0 and math.isfinite(root) else None


def _quadratic(
    b: _Bracket, lr_guess: float, tol: float, max_steps: int, slope: float | None
) -> None:
    q = 1 / (1 - tol)  # the bracket is closed once upper/lower <= q
    m = q**0.25  # margin to one side of a predicted root
    floor, cap = lr_guess * 2.0**-max_steps, lr_guess * 2.0**max_steps
    growth = 2.0  # step factor while there is no bracket and no model; squared after each use
    surprises = 0
    budget = 4 * max_steps + 64  # loose; past it, plain bisection (which always terminates)
    # The known slope is the line's value at eta = 0: (0, dL/deta(0)) in the (eta, y) plane.
    origin = [(0.0, slope)] if slope is not None and math.isfinite(slope) else []
    # Without a slope or known probes, a warm start first steps one tol-width towards the root;
    # with them, the model is known from the first probe on, and the same rules place the
    # second probe.
    first = not origin and b.fresh and b.known == 0
    if b.start(lr_guess):  # else seeded by the tie walk, or known probes hold the guess aside
        b.probe(lr_guess)
    while not (b.closed(tol) or _settled_ascent(b)):
        finite = sorted((e, b.slope(e, loss)) for e, loss in b.probes if math.isfinite(loss))
        if not math.isfinite(b.hi):  # every probe so far left the loss <= L0: step up
            if b.lo >= cap:
                return
            ups = origin + [pt for pt in finite if pt[0] <= b.lo]
            root = _line_root(ups[-2], ups[-1]) if len(ups) >= 2 else None
            if first:
                eta = b.lo * q  # warm start: one tol-width towards the root
            elif root is not None and root > b.lo / q:
                # A root at `lower` itself (its loss tied L0) still means one tol-width up.
                eta = min(max(root * m, b.lo * q), b.lo * 64)
            else:
                eta, growth = b.lo * growth, growth * growth
            b.probe(min(eta, cap))
        elif b.lo == 0:  # every probe so far raised the loss: step down
            if b.hi <= floor:
                return
            downs = [pt for pt in finite if pt[0] >= b.hi]
            # With the slope, interpolate between eta = 0 and the nearest increase; else
            # extrapolate from the two nearest increases.
            pair = origin + downs[:1] if origin else downs[:2]
            root = _line_root(pair[0], pair[1]) if len(pair) >= 2 and downs else None
            if first:
                eta = b.hi / q
            elif root is not None and root < b.hi * q:
                eta = max(min(root / m, b.hi / q), b.hi / 64)
            else:
                eta, growth = b.hi / growth, growth * growth
            b.probe(max(eta, floor))
        else:  # a bracket: close it
            lo, hi = b.lo, b.hi
            y_lo, y_hi = b.slope(lo, b.loss_lo), b.slope(hi, b.loss_hi)
            root = _line_root((lo, y_lo), (hi, y_hi))
            # Before any probe has descended, `lower` only ties L0 and the model's line runs
            # through rounding noise: bisect instead (the ascent case, see `_settled_ascent`).
            if surprises >= 2 or root is None or len(b.probes) > budget or not _descended(b):
                surprises = 0
                # Geometric midpoint while the bracket spans more than a factor 2 (it may come
                # from a long jump), arithmetic after, as the baseline.
                eta = math.sqrt(lo * hi) if hi > 2 * lo else (lo + hi) / 2
                b.probe(eta)
                continue
            root = min(max(root, lo), hi)
            if lo * q < hi and lo * q >= root * m:
                eta, expect_up = lo * q, True  # an increase here closes the bracket
            elif hi / q > lo and hi / q <= root / m:
                eta, expect_up = hi / q, False  # no increase here closes it
            else:
                eta, expect_up = root / m, False  # approach from below, close from above next
            # Strictly inside the bracket, so every probe shrinks it.
            width = hi - lo
            eta = min(max(eta, lo + width / 64), hi - width / 64)
            went_up = b.probe(eta)
            surprises = surprises + 1 if went_up != expect_up else 0
        first = False


def critical_lr(
    loss_at: Callable[[float], float],
    *,
    loss0: float,
    lr_guess: float,
    tol: float = 1 / 16,
    max_steps: int = 40,
    method: SearchMethod = "quadratic",
    slope: float | None = None,
    known: Sequence[tuple[float, float]] = (),
) -> CriticalLR:
    """Search the smallest step along a line at which the loss rises above `loss0`.

    Args:
        loss_at: The line function, `eta -> L(theta - eta * d)`; each call is one forward.
        loss0: `L(theta)`, the loss at `eta = 0` (must be finite).
        lr_guess: First step to try; pass the last `eta_c` for a warm start (with a slope, the
            last `eta_c` times `slope / last slope` carries the last curvature over).
        tol: Stop once `1 - lower/upper <= tol`.
        max_steps: At most this many doublings/halvings away from `lr_guess` (factor 2**max_steps).
        method: `"quadratic"` (model-placed probes, fewer forwards) or `"bisect"` (the baseline).
        slope: `dL/deta` at `eta = 0` (`-g.d`), if known; places the quadratic search's probes
            (ignored by `"bisect"`). It never decides the bracket.
        known: `(eta, loss)` points of this line that the caller already evaluated, with the
            same function (e.g. the loss change at the planned rate). They enter the bracket,
            the model and the descent check like probes, lead `probes`, and cost no forward.

    Returns:
        The bracket, the estimate, its status and every probe.

    Raises:
        CurvatureError: For a non-finite `loss0`, a non-positive or non-finite `lr_guess`, `tol`
            outside (0, 1), `max_steps < 1`, an unknown method or a known point whose step is
            not a finite number > 0.
    """
    if not math.isfinite(loss0):
        raise CurvatureError(f"loss0 must be finite, got {loss0}; check the model and batch")
    if not (math.isfinite(lr_guess) and lr_guess > 0):
        raise CurvatureError(f"lr_guess must be a finite number > 0, got {lr_guess}")
    if not 0 < tol < 1:
        raise CurvatureError(f"tol must lie in (0, 1), got {tol}; 1/16 is the default")
    if max_steps < 1:
        raise CurvatureError(f"max_steps must be >= 1, got {max_steps}")
    if method not in ("bisect", "quadratic"):
        raise CurvatureError(f"method must be 'bisect' or 'quadratic', got {method!r}")
    if slope is not None and not math.isfinite(slope):
        raise CurvatureError(f"slope must be a finite number or None, got {slope}")
    known = [(float(eta), float(loss)) for eta, loss in known]
    for eta, _ in known:
        if not (math.isfinite(eta) and eta > 0):
            raise CurvatureError(
                f"a known probe's step must be a finite number > 0, got {eta}; leave out the "
                "loss at eta = 0 (that is loss0)"
            )

    b = _Bracket(loss_at, float(loss0))
    for eta, loss in known:
        b.record(eta, loss)
    b.known = len(known)
    _search(b, method, lr_guess, tol, max_steps, slope)
    if not math.isfinite(b.hi) or _descended(b) or _confirmed_increase(b):
        return _result(b)
    # Every increase so far is within rounding of L0: no evidence yet that d ascends.
    earlier = b.probes
    b, verdict = _walk_out_of_ties(b, lr_guess * 2.0**max_steps, slope)
    if verdict == "descent":
        _search(b, method, lr_guess, tol, max_steps, slope)
    b.probes, b.known = earlier + b.probes, len(known)
    if verdict == "flat":
        top = max(e for e, _ in b.probes)
        n = len(b.probes) - b.known
        return CriticalLR(top, math.inf, top, 2 / top, n, "no_increase", b.probes, b.loss0)
    return _result(b)


def _search(
    b: _Bracket,
    method: SearchMethod,
    lr_guess: float,
    tol: float,
    max_steps: int,
    slope: float | None,
) -> None:
    """Run the search on `b` until its bracket stands (a loop, not a recursion: a recursive
    closure would be a reference cycle that keeps the line function, and through it the
    perturbed model's direction, alive until the garbage collector runs)."""
    while True:
        if method == "bisect":
            _bisect(b, lr_guess, tol, max_steps)
        else:
            _quadratic(b, lr_guess, tol, max_steps, slope)
        if not (b.lo > 0 and math.isfinite(b.hi) and not _descended(b)):
            return
        # Every probe at or below `lower` only tied L0. One more probe below tells a root that
        # happened to be hit exactly (the loss descends there) from a loss whose descent is
        # below its rounding resolution (flat there too: increases_immediately).
        eta = b.lo / 2
        b.probes.append((eta, float(b.loss_at(eta))))
        if not (_descended(b) and not b.closed(tol)):
            return
        # A real descent after all: close the bracket it left open.


def _settled_ascent(b: _Bracket) -> bool:
    """Whether a bracket between a tie and a confirmed increase is narrow enough to stop.

    No probe has descended: `lower` only ties L0 and `upper` rises above its rounding band. The
    bracket is then the edge of the rounding band on an ascending line, and closing it to `tol`
    would only place that edge. Under the quadratic model, a descent hidden in a bracket with
    `upper <= 4 * lower` is at most 4/3 of the larger of the ties at `lower` and at `lower / 2`
    (the probe `critical_lr` adds): within rounding too, so the verdict cannot change. That
    probe, or any later one, that does descend reopens the search.
    """
    if b.lo == 0 or not math.isfinite(b.hi) or b.hi > _TIE_BRACKET * b.lo:
        return False
    return _confirmed_increase(b) and not _descended(b)


def _descended(b: _Bracket) -> bool:
    # A descent within L0's rounding band is a tie, as an increase within it is: only a loss
    # below that band proves that the direction lowers the loss somewhere.
    band = _tie_band(b)
    return any(math.isfinite(loss) and loss < b.loss0 - band for _, loss in b.probes)


def _tie_band(b: _Bracket) -> float:
    """`_TIE_ULPS` ulps of L0 in the precision the losses come in.

    A model's loss is a float32 scalar (every value exactly representable in float32): its band
    is float32 ulps. Losses computed in float64 (closed forms, sums of float32 chunks) are
    resolved to float64 ulps.
    """
    values = [b.loss0] + [loss for _, loss in b.probes if math.isfinite(loss)]
    if all(float(np.float32(v)) == v for v in values):
        return _TIE_ULPS * float(np.spacing(np.float32(abs(b.loss0))))
    return _TIE_ULPS * float(np.spacing(abs(b.loss0)))


def _confirmed_increase(b: _Bracket) -> bool:
    band = _tie_band(b)
    return any(not math.isfinite(loss) or loss > b.loss0 + band for _, loss in b.probes)


def _walk_out_of_ties(
    b: _Bracket, cap: float, slope: float | None
) -> tuple[_Bracket, Literal["descent", "increase", "flat"]]:
    """Step up from the largest probe until the loss leaves L0's rounding band.

    Returns a new bracket holding the walk's probes (seeded with the descent, which the search
    then continues from) and what the walk found. The earlier within-band "increases" are not
    in the new bracket: they were ties.
    """
    band = _tie_band(b)
    eta = max(e for e, _ in b.probes) * 8
    if slope is not None and slope < 0:
        eta = max(eta, 8 * band / -slope)  # where the first-order change is a few bands
    walk = _Bracket(b.loss_at, b.loss0)
    walk.fresh = False  # seeded with the walk's descent: the search goes on from there
    while True:
        eta = min(eta, cap)
        loss = float(b.loss_at(eta))
        if not math.isfinite(loss) or loss > b.loss0 + band:
            walk.record(eta, loss)
            # A confirmed increase: the old bracket's verdict stands, with the walk's probe added.
            b.probes = walk.probes
            return b, "increase"
        if loss < b.loss0 - band:
            walk.record(eta, loss)
            return walk, "descent"
        walk.probes.append((eta, loss))
        if eta >= cap:
            return walk, "flat"
        eta *= 8


def _result(b: _Bracket) -> CriticalLR:
    n = len(b.probes) - b.known
    descended = _descended(b)
    if not math.isfinite(b.hi):
        lower = b.lo
        return CriticalLR(lower, math.inf, lower, 2 / lower, n, "no_increase", b.probes, b.loss0)
    if b.lo == 0 or not descended:
        return CriticalLR(0.0, b.hi, 0.0, math.inf, n, "increases_immediately", b.probes, b.loss0)
    eta = (b.lo + b.hi) / 2
    return CriticalLR(b.lo, b.hi, eta, 2 / eta, n, "ok", b.probes, b.loss0)
