"""The sweep plot renders from whatever has been measured."""

from __future__ import annotations

import io
import math

from matplotlib.image import imread

from service.db.models import Measurement
from service.plot import render_sweep_plot
from service.spec import Recommendation, SweepSpec
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
