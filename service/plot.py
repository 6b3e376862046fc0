"""The sweep's picture: critical sharpness against the mix ratio, one line per evaluation set.

lambda_c = 2 / eta_c is the sharpness at which a step along the mix's update direction stops
lowering an evaluation set's loss (docs/method.md). A set is stable at the planned learning rate
while eta_c is above that rate, that is while its lambda_c stays *below* the horizontal line
2 / learning_rate; the region below the line is shaded and labelled "stable", the one above
"unstable". The recommended ratio is marked with a vertical line.

Two things keep the picture honest:

- The vertical axis covers the bulk of the points and the 2 / learning_rate line (robust limits):
  a single far-off point does not stretch it over empty decades; it is drawn as a triangle on the
  axis edge with its value written beside it.
- A point whose confidence interval has no end on one side (the bound on eta_c is zero or
  infinite) is drawn hollow, with its bar running to the axis edge and ending in an arrow, so the
  least certain points do not look the most precise.

Rendered with matplotlib's object API on the Agg canvas: no global pyplot state, safe in threads.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from contract.recommendation import Recommendation
from contract.spec import SweepSpec
from contract.wire import finite
from service.db.models import Measurement

# Fences of the robust axis, in decades: points further than this beyond the quartiles of
# log10(lambda_c) are outliers; the axis keeps at least this span around what it shows.
_FENCE_IQR = 1.5
_MIN_SPAN_DECADES = 1.0
_PAD_DECADES = 0.15


def _sharpness(eta: float | None) -> float | None:
    value = finite(eta)
    return 2.0 / value if value is not None and value > 0 else None


@dataclass(frozen=True)
class PlotPoint:
    """One measured ratio of one evaluation set, in lambda_c terms.

    Attributes:
        ratio: The pre-training ratio.
        sharpness: lambda_c = 2 / eta_c.
        low: Lower end of lambda_c's interval (from eta_c's upper bound), None when open.
        high: Upper end of lambda_c's interval (from eta_c's lower bound), None when open.
    """

    ratio: float
    sharpness: float
    low: float | None
    high: float | None

    @property
    def open_ended(self) -> bool:
        """Whether the interval lacks an end on either side."""
        return self.low is None or self.high is None


def plot_points(rows: Sequence[Measurement]) -> list[PlotPoint]:
    """The plottable points of one evaluation set's measurements, by ratio.

    Rows without a finite, positive eta_c (no instability found) have no point. The interval on
    eta_c maps to an inverted one on lambda_c: eta_c's upper bound gives lambda_c's lower end.
    """
    points = []
    for row in sorted(rows, key=lambda m: m.ratio):
        sharpness = _sharpness(row.eta_c)
        if sharpness is None:
            continue
        low, high = _sharpness(row.eta_c_high), _sharpness(row.eta_c_low)
        points.append(
            PlotPoint(
                ratio=row.ratio,
                sharpness=sharpness,
                low=min(low, sharpness) if low is not None else None,
                high=max(high, sharpness) if high is not None else None,
            )
        )
    return points


def axis_limits(values: Sequence[float], line: float) -> tuple[float, float]:
    """Log-axis limits that show the bulk of ``values`` and always ``line``.

    Values further than ``_FENCE_IQR`` interquartile ranges (in decades, at least half a decade)
    beyond the quartiles of their logarithms are left outside, so one outlier cannot stretch the
    axis over empty decades. The span is at least ``_MIN_SPAN_DECADES`` and padded on both sides.

    Args:
        values: Positive finite numbers to show (points and interval ends).
        line: The reference line, always inside the limits.

    Returns:
        ``(bottom, top)``, both positive.
    """
    logs = sorted(math.log10(v) for v in values if v > 0 and math.isfinite(v))
    anchor = math.log10(line)
    kept = [anchor]
    if logs:
        q1, q3 = _quantile(logs, 0.25), _quantile(logs, 0.75)
        fence = max(_FENCE_IQR * (q3 - q1), 0.5)
        kept += [v for v in logs if q1 - fence <= v <= q3 + fence]
    bottom, top = min(kept), max(kept)
    if top - bottom < _MIN_SPAN_DECADES:
        middle = (top + bottom) / 2
        bottom, top = middle - _MIN_SPAN_DECADES / 2, middle + _MIN_SPAN_DECADES / 2
    return 10 ** (bottom - _PAD_DECADES), 10 ** (top + _PAD_DECADES)


def _quantile(ordered: Sequence[float], q: float) -> float:
    position = q * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def render_sweep_plot(
    spec: SweepSpec,
    measurements: Sequence[Measurement],
    recommendation: Recommendation | None,
) -> bytes:
    """PNG of lambda_c against ratio per evaluation set, with confidence intervals.

    Works for a running sweep too: it draws what has been measured so far. Measurements without a
    finite, positive eta_c (no instability found) have no point. Below the 2 / learning_rate line
    a set is stable at the planned rate; the figure labels both sides.

    Args:
        spec: The sweep's request (learning rate, evaluation sets in order).
        measurements: Its measurements so far.
        recommendation: The recommendation, once the sweep has succeeded.

    Returns:
        The PNG file's bytes.
    """
    figure = Figure(figsize=(7.5, 4.8), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    line = 2.0 / spec.learning_rate
    series = [
        (ref.name, plot_points([m for m in measurements if m.eval_set == ref.name]))
        for ref in spec.eval_sets()
    ]
    values = [
        v
        for _, points in series
        for p in points
        for v in (p.sharpness, p.low, p.high)
        if v is not None
    ]
    bottom, top = axis_limits(values, line)
    axes.set_yscale("log")
    axes.set_ylim(bottom, top)
    axes.axhspan(bottom, line, color="tab:green", alpha=0.07, linewidth=0)
    for index, (name, points) in enumerate(series):
        if points:
            _draw_set(axes, points, f"C{index}", f"{name} ({spec.role(name)})", bottom, top)
    axes.axhline(line, color="black", linestyle="--", label="2 / learning rate")
    if any(p.open_ended for _, points in series for p in points):
        axes.plot([], [], "o", color="grey", markerfacecolor="white", label="interval open-ended")
    # Which side is which, written on the figure: below the line eta_c exceeds the planned rate.
    for text, y, va, color in (
        ("stable below: eta_c above the planned rate", line / 10**0.06, "top", "darkgreen"),
        ("unstable above", line * 10**0.06, "bottom", "darkred"),
    ):
        axes.text(
            0.99,
            y,
            text,
            transform=axes.get_yaxis_transform(),
            ha="right",
            va=va,
            fontsize="small",
            color=color,
        )
    if recommendation is not None and recommendation.ratio is not None:
        axes.axvline(
            recommendation.ratio,
            color="tab:red",
            linestyle=":",
            label=f"recommended ratio {recommendation.ratio:.3g}",
        )
    axes.set_xlim(-0.02, 1.02)
    axes.set_xlabel("pre-training ratio (fraction of pre-training tokens)")
    axes.set_ylabel("critical sharpness  2 / eta_c")
    axes.set_title(f"critical sharpness by mix ratio at learning rate {spec.learning_rate:.3g}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small", loc="upper left")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _draw_set(
    axes: Axes, points: list[PlotPoint], color: str, label: str, bottom: float, top: float
) -> None:
    """One evaluation set: the line, closed points with bars, open-ended and off-axis points."""
    inside = [p for p in points if bottom <= p.sharpness <= top]
    axes.plot([p.ratio for p in inside], [p.sharpness for p in inside], color=color, label=label)
    for p in inside:
        low = p.low if p.low is not None else bottom
        high = p.high if p.high is not None else top
        axes.vlines(p.ratio, max(low, bottom), min(high, top), color=color, linewidth=1)
        axes.plot(
            p.ratio,
            p.sharpness,
            marker="o",
            color=color,
            markerfacecolor="white" if p.open_ended else color,
        )
        if p.high is None:  # the bar runs off the top: nothing bounds lambda_c from above
            axes.plot(p.ratio, top, marker="^", color=color, clip_on=False)
        if p.low is None:
            axes.plot(p.ratio, bottom, marker="v", color=color, clip_on=False)
    for p in points:
        if bottom <= p.sharpness <= top:
            continue
        edge, marker = (top, "^") if p.sharpness > top else (bottom, "v")
        axes.plot(p.ratio, edge, marker=marker, color=color, markersize=9, clip_on=False)
        axes.annotate(
            f"{p.sharpness:.2g}",
            (p.ratio, edge),
            textcoords="offset points",
            xytext=(6, -12 if marker == "^" else 4),
            fontsize="x-small",
            color=color,
        )
