"""The sweep's picture: critical sharpness against the mix ratio, one line per evaluation set.

lambda_c = 2 / eta_c is the sharpness at which a step of the planned size stops lowering the loss
(../shared/method.md). A set is stable at the planned learning rate while its lambda_c stays above
the horizontal line 2 / learning_rate; the recommended ratio is marked with a vertical line.
Rendered with matplotlib's object API on the Agg canvas: no global pyplot state, safe in threads.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from service.db.models import Measurement
from service.spec import Recommendation, SweepSpec, finite


def _sharpness(eta: float | None) -> float | None:
    value = finite(eta)
    return 2.0 / value if value is not None and value > 0 else None


def render_sweep_plot(
    spec: SweepSpec,
    measurements: Sequence[Measurement],
    recommendation: Recommendation | None,
) -> bytes:
    """PNG of lambda_c against ratio per evaluation set, with confidence intervals.

    Works for a running sweep too: it draws what has been measured so far. Measurements without a
    finite, positive eta_c (no instability found) have no point.

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
    for ref in spec.eval_sets():
        rows = sorted((m for m in measurements if m.eval_set == ref.name), key=lambda m: m.ratio)
        points = [(m, lam) for m in rows if (lam := _sharpness(m.eta_c)) is not None]
        if not points:
            continue
        ratios = [m.ratio for m, _ in points]
        sharpness = [lam for _, lam in points]
        # The interval on eta_c maps to an inverted one on lambda_c: eta_c_high gives the low end.
        below = [lam - (_sharpness(m.eta_c_high) or lam) for m, lam in points]
        above = [(_sharpness(m.eta_c_low) or lam) - lam for m, lam in points]
        axes.errorbar(
            ratios,
            sharpness,
            yerr=[[max(d, 0.0) for d in below], [max(d, 0.0) for d in above]],
            marker="o",
            capsize=3,
            label=f"{ref.name} ({spec.role(ref.name)})",
        )
    axes.axhline(2.0 / spec.learning_rate, color="black", linestyle="--", label="2 / learning rate")
    if recommendation is not None and recommendation.ratio is not None:
        axes.axvline(
            recommendation.ratio,
            color="tab:red",
            linestyle=":",
            label=f"recommended ratio {recommendation.ratio:.3g}",
        )
    axes.set_yscale("log")
    axes.set_xlim(-0.02, 1.02)
    axes.set_xlabel("pre-training ratio (fraction of pre-training tokens)")
    axes.set_ylabel("critical sharpness  2 / eta_c")
    axes.set_title(f"critical sharpness by mix ratio at learning rate {spec.learning_rate:.3g}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
