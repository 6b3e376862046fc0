"""The sweep plot renders from whatever has been measured."""

from __future__ import annotations

import io
import math

from matplotlib.image import imread

from contract.recommendation import Recommendation
from contract.spec import SweepSpec
from service.db.models import Measurement
from service.plot import render_sweep_plot
from tests.service.support import sweep_body


def measurement(ratio: float, eval_set: str, eta_c: float | None) -> Measurement:
    return Measurement(
        ratio=ratio,
        eval_set=eval_set,
        eta_c=eta_c,
        eta_c_low=None if eta_c is None else eta_c * 0.5,
        eta_c_high=math.inf,
    )


def test_renders_points_lines_and_the_recommendation() -> None:
    spec = SweepSpec.model_validate(sweep_body())
    rows = [
        measurement(0.0, "web", 1e-3),
        measurement(0.5, "web", 4e-3),
        measurement(0.0, "code", None),
        measurement(0.25, "wiki", math.inf),
    ]
    recommendation = Recommendation(
        objective="flat_pretraining",
        ratio=0.5,
        reason="flat",
        learning_rate=1e-3,
        in_basin=True,
        max_stable_lr=4e-3,
        flat_ratio=0.5,
        balanced_ratio=0.5,
        least_forgetting_ratio=0.5,
        confidence="medium",
    )
    image = imread(io.BytesIO(render_sweep_plot(spec, rows, recommendation)), format="png")
    assert image.shape[:2] == (480, 750)


def test_renders_with_nothing_plottable_yet() -> None:
    spec = SweepSpec.model_validate(sweep_body())
    png = render_sweep_plot(spec, [measurement(0.0, "code", None)], None)
    assert png.startswith(b"\x89PNG")


def test_one_outlier_does_not_stretch_the_axis() -> None:
    from service.plot import axis_limits

    bulk = [2e3, 3e3, 5e3, 8e3, 1.2e4]
    bottom, top = axis_limits([*bulk, 1e8], line=2e3)
    assert top < 1e5 and bottom <= 2e3 <= top  # the 1e8 point is left off, the line is kept
    assert axis_limits(bulk, line=2e3) == (bottom, top)
    far_line_bottom, far_line_top = axis_limits(bulk, line=2e7)
    assert far_line_bottom <= 2e3 and far_line_top >= 2e7  # the reference line is always shown


def test_open_intervals_are_marked_open_and_mapped_the_right_way() -> None:
    from service.plot import plot_points

    rows = [
        Measurement(ratio=0.5, eval_set="web", eta_c=1e-3, eta_c_low=5e-4, eta_c_high=2e-3),
        Measurement(ratio=0.0, eval_set="web", eta_c=1e-3, eta_c_low=0.0, eta_c_high=2e-3),
        Measurement(ratio=1.0, eval_set="web", eta_c=1e-3, eta_c_low=5e-4, eta_c_high=math.inf),
    ]
    closed, no_top, no_bottom = (
        {p.ratio: p for p in plot_points(rows)}[r] for r in (0.5, 0.0, 1.0)
    )
    assert (closed.low, closed.sharpness, closed.high) == (1e3, 2e3, 4e3)
    assert not closed.open_ended
    assert no_top.high is None and no_top.low == 1e3 and no_top.open_ended
    assert no_bottom.low is None and no_bottom.high == 4e3 and no_bottom.open_ended


def test_docstring_and_figure_agree_on_the_stable_side() -> None:
    import service.plot

    doc = " ".join((service.plot.__doc__ or "").split())
    assert "stays *below* the horizontal line" in doc
    spec = SweepSpec.model_validate(sweep_body())
    rows = [measurement(0.0, "web", 1e-3), measurement(0.5, "web", 1e-8)]  # 1e-8: an outlier
    image = imread(io.BytesIO(render_sweep_plot(spec, rows, None)), format="png")
    assert image.shape[:2] == (480, 750)
