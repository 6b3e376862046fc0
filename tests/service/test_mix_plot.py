"""The picture of a k-domain sweep: one line per mix on parallel axes, and its table."""

from __future__ import annotations

import io

import pytest
from matplotlib.image import imread

from contract.recommendation import Recommendation
from contract.spec import SweepSpec
from service.db.models import Measurement
from service.mix_plot import mix_lines, render_mix_plot
from tests.service.support import sweep_body

A = {"web": 0.5, "more": 0.1, "code": 0.4}
B = {"web": 0.1, "more": 0.2, "code": 0.7}
C = {"web": 0.2, "more": 0.1, "code": 0.7}  # the same pre-training total as B


def spec() -> SweepSpec:
    return SweepSpec.model_validate(
        sweep_body(
            pretraining=[{"name": "web", "path": "w"}, {"name": "more", "path": "m"}],
            ratios=None,
            mixes=[A, B, C],
        )
    )


def rows(mix: dict[str, float], low: float, change: float) -> list[Measurement]:
    def row(eval_set: str, role: str) -> Measurement:
        return Measurement(
            ratio=mix["web"] + mix["more"],
            eval_set=eval_set,
            role=role,
            status="ok",
            eta_c=low * 1.2,
            eta_c_low=low,
            eta_c_high=low * 1.5,
            loss_change=change,
            weights=mix,
        )

    return [row("web", "pretraining"), row("more", "pretraining"), row("code", "finetuning")]


def test_the_table_lists_each_mix_by_its_weights_not_its_ratio() -> None:
    measured = rows(A, 4e-3, 0.001) + rows(B, 5e-4, 0.004) + rows(C, 2e-3, 0.002)
    lines = mix_lines(spec(), measured)
    assert [line.weights for line in lines] == [C, B, A]  # by total, the wider margin first
    assert [line.in_basin for line in lines] == [True, False, True]  # planned rate 1e-3
    assert lines[0].eta_low == pytest.approx(2e-3)
    assert lines[1].pretraining_change == pytest.approx(0.004)


def test_renders_the_mixes_and_the_recommended_one() -> None:
    measured = rows(A, 4e-3, 0.001) + rows(B, 5e-4, 0.004) + rows(C, 2e-3, 0.002)
    recommendation = Recommendation(
        objective="flat_pretraining",
        ratio=0.3,
        weights=C,
        reason="flat",
        learning_rate=1e-3,
        in_basin=True,
        max_stable_lr=2e-3,
        flat_ratio=0.3,
        balanced_ratio=None,
        least_forgetting_ratio=None,
        confidence="medium",
    )
    image = imread(io.BytesIO(render_mix_plot(spec(), measured, recommendation)), format="png")
    assert image.shape[:2] == (520, 1200)
    assert render_mix_plot(spec(), [], None).startswith(b"\x89PNG")


def test_trajectories_of_listed_mixes_are_drawn_named_by_their_weights() -> None:
    from contract.wire import RatioTrajectory, TrajectoriesOut, TrajectoryPointOut
    from service.trajectory_plot import render_trajectory_plot

    body = sweep_body(
        pretraining=[{"name": "web", "path": "w"}, {"name": "more", "path": "m"}],
        ratios=None,
        mixes=[A, B],
        trajectory={"steps": 2, "measure_every": 1},
    )

    def point(step: int, drift: float) -> TrajectoryPointOut:
        return TrajectoryPointOut(
            step=step,
            lr=1e-3,
            eval_set="web",
            role="pretraining",
            status="ok",
            loss=3.0 + drift,
            drift=drift,
            eta_c=2e-3,
            eta_c_low=1e-3,
            eta_c_high=3e-3,
            sharpness=1e3,
            loss_change=-0.01,
        )

    data = TrajectoriesOut(
        sweep_id="s",
        planned_steps=1000,
        tolerance=0.02,
        steps=2,
        measure_every=1,
        ratios=[
            RatioTrajectory(
                ratio=mix["web"] + mix["more"],
                weights=mix,
                state="done",
                pruned=False,
                steps_done=2,
                points=[point(s, 0.01 * s) for s in range(3)],
                forecast=[],
            )
            for mix in (A, B)
        ],
    )
    png = render_trajectory_plot(SweepSpec.model_validate(body), data)
    assert png.startswith(b"\x89PNG")
