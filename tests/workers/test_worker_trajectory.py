"""Trajectory sweeps on the worker, on the real database: listed ratios and 'auto'."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from sqlalchemy import select

from contract.states import SweepState, TaskKind
from service.db.engine import make_engine, make_session_factory
from service.db.migrate import upgrade
from service.db.models import Sweep, SweepTask, TrajectoryPoint
from tests.conftest import SweepAssets
from tests.workers.test_worker import settings_for, submit
from workers.worker import Worker

pytestmark = [pytest.mark.db, pytest.mark.slow]

TRAJECTORY = {"steps": 4, "measure_every": 2}


def _run(settings, body):  # type: ignore[no-untyped-def]
    sweep_id = submit(settings, body)
    worker = Worker(settings, worker_id="w1")
    try:
        done = worker.run(exit_when_idle=True)
    finally:
        worker.close()
    return sweep_id, done


def test_listed_ratios_each_get_a_trajectory_and_the_answer_rests_on_them(
    db_url: str, sweep_assets: SweepAssets, tmp_path: Path
) -> None:
    settings = settings_for(db_url, sweep_assets, tmp_path)
    body = sweep_assets.spec(
        ratios=[0.0, 1.0], batches=1, trajectory=TRAJECTORY, planned_steps=12, tolerance=0.5
    )
    sweep_id, done = _run(settings, body)
    assert done == 4  # two first-step measurements, two trajectories

    engine = make_engine(db_url)
    with make_session_factory(engine)() as session:
        sweep = session.get_one(Sweep, sweep_id)
        assert sweep.state == SweepState.succeeded, sweep.error
        assert sweep.optimizer_steps == 8
        tasks = list(session.scalars(select(SweepTask).where(SweepTask.sweep_id == sweep_id)))
        trajectories = [t for t in tasks if t.kind == TaskKind.trajectory]
        assert sorted(t.ratio for t in trajectories) == [0.0, 1.0]
        assert all(t.steps_done == 4 and t.forecast for t in trajectories)
        points = list(
            session.scalars(select(TrajectoryPoint).where(TrajectoryPoint.sweep_id == sweep_id))
        )
        # Steps 0, 2, 4 for two sets and two ratios, each written once.
        assert len(points) == 3 * 2 * 2
        assert sorted({p.step for p in points}) == [0, 2, 4]
        rec = sweep.recommendation
        assert rec is not None and rec["basis"] == "trajectory"
        assert len(rec["trajectories"]) == 2
        assert rec["planned_steps"] == 12 and rec["tolerance"] == 0.5
    engine.dispose()
    study = optuna.load_study(study_name=f"sharpmix-{sweep_id}-trajectory", storage=db_url)
    assert sorted(t.params["ratio"] for t in study.trials) == [0.0, 1.0]
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in study.trials)
    assert all(len(t.intermediate_values) >= 1 for t in study.trials)


def test_auto_ratios_screen_first_then_run_trajectories_around_the_boundary(
    sweep_assets: SweepAssets, tmp_path: Path
) -> None:
    # Ten tasks: on SQLite only (the queue's statements are the listed-ratio test's, on both).
    db_url = f"sqlite:///{tmp_path / 'auto.db'}"
    upgrade(db_url)
    settings = settings_for(db_url, sweep_assets, tmp_path)
    trajectory = {**TRAJECTORY, "ratios": 2}
    body = sweep_assets.spec(ratios="auto", batches=1, trajectory=trajectory, planned_steps=4)
    sweep_id, done = _run(settings, body)
    assert done == 8 + 2

    engine = make_engine(db_url)
    with make_session_factory(engine)() as session:
        sweep = session.get_one(Sweep, sweep_id)
        assert sweep.state == SweepState.succeeded, sweep.error
        assert sweep.tasks_total == sweep.tasks_done == 10
        kinds = [
            t.kind
            for t in session.scalars(
                select(SweepTask).where(SweepTask.sweep_id == sweep_id).order_by(SweepTask.slot)
            )
        ]
        assert kinds == [TaskKind.measure] * 8 + [TaskKind.trajectory] * 2
        rec = sweep.recommendation
        assert rec is not None and rec["basis"] == "trajectory"
        # N == K: the forecast is the measurement itself.
        assert all(f["measured"] for v in rec["trajectories"] for f in v["forecasts"])
    engine.dispose()
