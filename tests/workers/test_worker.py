"""The sweep worker on a real (tiny) model and the real database: a sweep runs to a
recommendation, its Optuna study records it, and shutdown or cancel stop it cleanly."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import optuna
import pytest
from sqlalchemy import func, select

from contract.spec import SweepSpec
from contract.states import SweepState, TaskState
from service.config import Settings
from service.db.engine import make_engine, make_session_factory
from service.db.models import Measurement, Sweep, SweepTask
from service.db.sweeps import create_sweep
from service.db.tenants import create_tenant
from tests.conftest import SweepAssets
from workers.worker import Worker

pytestmark = pytest.mark.db


def submit(settings: Settings, body: dict[str, object]) -> str:
    engine = make_engine(settings.resolved_database_url)
    try:
        with make_session_factory(engine)() as session:
            tenant = create_tenant(session, "team")
            sweep, _ = create_sweep(session, tenant.id, SweepSpec.model_validate(body), None)
            return sweep.id
    finally:
        engine.dispose()


def settings_for(db_url: str, assets: SweepAssets, tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path / "home",
        database_url=db_url,
        allowed_roots=[assets.root],
        device="cpu",
        lease_seconds=30,
        heartbeat_seconds=0.2,
    )


def test_worker_runs_a_sweep_to_a_recommendation(
    db_url: str, sweep_assets: SweepAssets, tmp_path: Path
) -> None:
    settings = settings_for(db_url, sweep_assets, tmp_path)
    sweep_id = submit(settings, sweep_assets.spec())
    worker = Worker(settings, worker_id="w1")
    try:
        assert worker.run(exit_when_idle=True) == 3
    finally:
        worker.close()

    engine = make_engine(db_url)
    with make_session_factory(engine)() as session:
        sweep = session.get_one(Sweep, sweep_id)
        assert sweep.state == SweepState.succeeded, sweep.error
        assert sweep.tasks_done == 3
        # K = 2 domains x B = 2 batches, once per sweep on this worker, micro-batched in one.
        assert sweep.backwards == 4
        rows = list(session.scalars(select(Measurement).where(Measurement.sweep_id == sweep_id)))
        assert sorted((m.ratio, m.eval_set) for m in rows) == [
            (r, s) for r in (0.0, 0.5, 1.0) for s in ("general", "math")
        ]
        assert all(m.batches == 2 and m.forwards > 0 for m in rows)
        assert sweep.forwards == sum(m.forwards for m in rows) + 2 * 2  # + L(theta) per batch/set
        assert sweep.recommendation is not None
        assert sweep.recommendation["objective"] == "flat_pretraining"
        assert len(sweep.recommendation["ranking"]) == 3
        # Exports convert token shares with each set's measured tokens per document.
        text = (sweep_assets.root / sweep_assets.general).read_text()
        general = [line for line in text.splitlines() if line.strip()]
        assert sweep.sources is not None and set(sweep.sources) == {"general", "math"}
        assert sweep.sources["general"]["documents"] == len(general)
        assert sweep.sources["general"]["tokens"] > len(general)  # each document ends in EOS
    engine.dispose()

    study = optuna.load_study(study_name=f"sharpmix-{sweep_id}", storage=db_url)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.params["ratio"] for t in complete) == [0.0, 0.5, 1.0]


def test_ratio_range_uses_the_sampler(
    db_url: str, sweep_assets: SweepAssets, tmp_path: Path
) -> None:
    settings = settings_for(db_url, sweep_assets, tmp_path)
    body = sweep_assets.spec(
        ratios=None, ratio_range={"low": 0.2, "high": 0.8, "trials": 3}, objective="balanced"
    )
    sweep_id = submit(settings, body)
    worker = Worker(settings, worker_id="w1")
    try:
        worker.run(exit_when_idle=True)
    finally:
        worker.close()
    study = optuna.load_study(study_name=f"sharpmix-{sweep_id}", storage=db_url)
    ratios = [t.params["ratio"] for t in study.trials]
    assert len(ratios) == 3 and all(0.2 <= r <= 0.8 for r in ratios)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    engine = make_engine(db_url)
    with make_session_factory(engine)() as session:
        sweep = session.get_one(Sweep, sweep_id)
        assert sweep.state == SweepState.succeeded, sweep.error
        assert sweep.recommendation and sweep.recommendation["balanced_ratio"] in ratios
    engine.dispose()


def test_shutdown_hands_the_task_back(
    db_url: str, sweep_assets: SweepAssets, tmp_path: Path
) -> None:
    settings = settings_for(db_url, sweep_assets, tmp_path)
    sweep_id = submit(settings, sweep_assets.spec(ratios=[0.5]))
    stop = threading.Event()
    stop.set()  # SIGTERM arrived: the set-up stops at its first checkpoint and hands back
    worker = Worker(settings, worker_id="w1", stop=stop)
    try:
        assert worker.run_one()
    finally:
        worker.close()
    engine = make_engine(db_url)
    with make_session_factory(engine)() as session:
        task = session.scalars(select(SweepTask).where(SweepTask.sweep_id == sweep_id)).one()
        assert task.state == TaskState.queued and task.attempts == 0 and task.worker_id is None
        assert task.optuna_trial_number is None  # stopped during set-up, before any trial
        assert session.scalar(select(func.count(Measurement.id))) == 0
    engine.dispose()
    # Another worker finishes it.
    other = Worker(settings, worker_id="w2")
    try:
        assert other.run(exit_when_idle=True) == 1
    finally:
        other.close()


def test_bad_data_fails_the_sweep_with_the_field(
    db_url: str, sweep_assets: SweepAssets, tmp_path: Path
) -> None:
    settings = settings_for(db_url, sweep_assets, tmp_path)
    sweep_id = submit(settings, sweep_assets.spec(batches=64, batch_tokens=4096))
    worker = Worker(settings, worker_id="w1")
    try:
        worker.run(exit_when_idle=True)
    finally:
        worker.close()
    engine = make_engine(db_url)
    with make_session_factory(engine)() as session:
        sweep = session.get_one(Sweep, sweep_id)
        assert sweep.state == SweepState.failed
        assert sweep.error and "pretraining" in sweep.error and "tokens" in sweep.error
    engine.dispose()


def test_a_corrupt_model_fails_at_once_naming_the_field_and_the_fix(
    db_url: str, sweep_assets: SweepAssets, tmp_path: Path
) -> None:
    # A model that broke after submission (submit-time checks passed): the worker's own
    # classification must still call it the user's, not retry it three times.
    broken = sweep_assets.root / "broken-model"
    shutil.copytree(sweep_assets.root / sweep_assets.model_dir, broken, dirs_exist_ok=True)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    settings = settings_for(db_url, sweep_assets, tmp_path)
    sweep_id = submit(settings, sweep_assets.spec(model={"path": "broken-model"}))
    worker = Worker(settings, worker_id="w1")
    try:
        worker.run(exit_when_idle=True)
    finally:
        worker.close()
    engine = make_engine(db_url)
    with make_session_factory(engine)() as session:
        sweep = session.get_one(Sweep, sweep_id)
        attempts = [t.attempts for t in sweep.tasks]
    engine.dispose()
    assert sweep.state == SweepState.failed
    assert max(attempts) == 1  # not retried
    assert sweep.error is not None
    assert sweep.error.startswith("model.path:") and "save_pretrained" in sweep.error


def test_errors_are_the_users_or_transient() -> None:
    from safetensors import SafetensorError

    from service.errors import DatabaseError
    from workers.data import DataError
    from workers.worker import classify

    assert classify(DataError("pretraining.path", "no such file")) == (
        True,
        "pretraining.path: no such file",
    )
    user, message = classify(SafetensorError("Error while deserializing header: incomplete"))
    assert user and message.startswith("model.path:") and "incomplete" in message
    assert classify(DatabaseError("connection lost"))[0] is False
    assert classify(OSError(28, "No space left on device"))[0] is False
    assert classify(RuntimeError("CUDA error: an illegal memory access"))[0] is False
