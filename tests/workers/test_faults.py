"""Workers as real processes under the faults an operator meets: a worker stopped (SIGSTOP) past
its lease and resumed after another took its task over, and workers killed in the two crash
windows around an Optuna trial. Afterwards no sweep is failed or lost, no task or trial is left
RUNNING, and nothing is counted twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
from sqlalchemy import select, update

from contract.states import SweepState, TaskKind, TaskState
from service.config import Settings
from service.db.engine import make_engine, make_session_factory
from service.db.models import Measurement, Sweep, SweepTask, TrajectoryPoint
from tests.conftest import POSTGRES_ENV, SweepAssets, _reset_postgres
from tests.workers.test_worker import submit
from workers.worker import Worker

# Several worker processes on one database is the PostgreSQL deployment: these tests run there
# only (the guards themselves are tested on both backends in tests/service/db/test_queue.py).
pytestmark = [
    pytest.mark.db,
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get(POSTGRES_ENV),
        reason=f"{POSTGRES_ENV} is not set (make test sets it when PostgreSQL runs)",
    ),
]

ROOT = Path(__file__).resolve().parents[2]
LEASE = 3.0


@pytest.fixture
def db_url(postgres_server_url: str) -> str:
    """This session's PostgreSQL database, emptied and migrated (no SQLite variant)."""
    from service.db.migrate import upgrade

    _reset_postgres(postgres_server_url)
    upgrade(postgres_server_url)
    return postgres_server_url


@pytest.fixture
def env(db_url: str, sweep_assets: SweepAssets, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "SHARPMIX_DATABASE_URL": db_url,
        "SHARPMIX_HOME": str(tmp_path / "home"),
        "SHARPMIX_ALLOWED_ROOTS": str(sweep_assets.root),
        "SHARPMIX_DEVICE": "cpu",
        "SHARPMIX_LEASE_SECONDS": str(LEASE),
        "SHARPMIX_HEARTBEAT_SECONDS": "0.5",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }


class Procs:
    """Processes started by a test, stopped at its end whatever happened."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, *args], env=self.env, cwd=ROOT, stdout=log, stderr=log
        )
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def procs(env: dict[str, str], tmp_path: Path) -> Iterator[Procs]:
    handle = Procs(env, tmp_path)
    yield handle
    handle.stop()


def wait_until(check: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting until {what}")


def sweep_state(db_url: str, sweep_id: str) -> tuple[SweepState, list[SweepTask]]:
    engine = make_engine(db_url)
    try:
        with make_session_factory(engine)() as session:
            sweep = session.get_one(Sweep, sweep_id)
            return sweep.state, list(sweep.tasks)
    finally:
        engine.dispose()


def assert_whole(db_url: str, sweep_id: str, ratios: list[float]) -> list[optuna.trial.FrozenTrial]:
    """The sweep succeeded, every task is done once, no trial is RUNNING; returns the trials."""
    engine = make_engine(db_url)
    with make_session_factory(engine)() as session:
        sweep = session.get_one(Sweep, sweep_id)
        assert sweep.state == SweepState.succeeded and sweep.error is None, sweep.error
        assert {t.state for t in sweep.tasks} == {TaskState.done}
        assert sweep.tasks_done == sweep.tasks_total == len(ratios)
        rows = session.scalars(select(Measurement).where(Measurement.sweep_id == sweep_id)).all()
        assert sorted((m.ratio, m.eval_set) for m in rows) == [
            (r, s) for r in ratios for s in ("general", "math")
        ]
    engine.dispose()
    study = optuna.load_study(study_name=f"sharpmix-{sweep_id}", storage=db_url)
    trials = study.get_trials(deepcopy=False)
    assert not [t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    finished = [t for t in trials if t.state.is_finished() and t.state.name != "FAIL"]
    assert sorted(t.params["ratio"] for t in finished) == sorted(ratios)
    return trials


def test_a_worker_stopped_past_its_lease_does_not_fail_the_sweep(
    db_url: str, env: dict[str, str], procs: Procs, sweep_assets: SweepAssets, tmp_path: Path
) -> None:
    ratios = [0.0, 1.0]
    settings = Settings(
        home=tmp_path / "home", database_url=db_url, allowed_roots=[sweep_assets.root]
    )
    sweep_id = submit(settings, sweep_assets.spec(ratios=ratios, batches=3))
    # Two earlier tries of every task failed: the stalled worker's try is the last one allowed,
    # the case where a failure would end the sweep.
    engine = make_engine(db_url)
    with make_session_factory(engine)() as session:
        session.execute(update(SweepTask).where(SweepTask.sweep_id == sweep_id).values(attempts=2))
        session.commit()
    engine.dispose()

    stalled = procs.start("stalled", "-m", "sharpmix.cli", "worker", "--id", "stalled")

    def measuring() -> bool:
        _, tasks = sweep_state(db_url, sweep_id)
        return any(t.worker_id == "stalled" and t.optuna_trial_number is not None for t in tasks)

    wait_until(measuring, "the first worker measures")
    stalled.send_signal(signal.SIGSTOP)
    procs.start("owner", "-m", "sharpmix.cli", "worker", "--id", "owner")
    wait_until(lambda: sweep_state(db_url, sweep_id)[0].is_final, "the sweep ends")
    stalled.send_signal(signal.SIGCONT)
    # Resumed after the new owner finished: it must find out, and touch nothing.
    wait_until(lambda: "another worker" in procs.log("stalled"), "the resumed worker notices")
    time.sleep(2 * LEASE)  # room for any late write it would make
    assert stalled.poll() is None, procs.log("stalled")

    assert_whole(db_url, sweep_id, ratios)
    _, tasks = sweep_state(db_url, sweep_id)
    assert {t.worker_id for t in tasks} == {"owner"}
    log = procs.log("stalled")
    assert "Cannot tell" not in log and "Traceback" not in log, log


@pytest.mark.parametrize("point", ["after_ask", "after_last_complete"])
def test_a_worker_killed_in_a_crash_window_leaves_no_trial_running(
    point: str,
    db_url: str,
    env: dict[str, str],
    procs: Procs,
    sweep_assets: SweepAssets,
    tmp_path: Path,
) -> None:
    ratios = [0.0, 1.0]
    settings = Settings(
        home=tmp_path / "home",
        database_url=db_url,
        allowed_roots=[sweep_assets.root],
        device="cpu",
        lease_seconds=LEASE,
        heartbeat_seconds=0.5,
    )
    sweep_id = submit(settings, sweep_assets.spec(ratios=ratios))
    crashing = procs.start(point, "-m", "tests.workers.crash_worker", point)
    assert crashing.wait(timeout=180) == -signal.SIGKILL, procs.log(point)
    state, _ = sweep_state(db_url, sweep_id)
    assert state == SweepState.running  # the crash left the sweep unfinished
    time.sleep(LEASE + 0.5)  # the dead worker's lease runs out

    rescuer = Worker(settings, worker_id="rescuer")
    try:
        rescuer.run(exit_when_idle=True)
    finally:
        rescuer.close()
    trials = assert_whole(db_url, sweep_id, ratios)
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    if point == "after_ask":
        assert len(failed) == 1  # the dead worker's trial, closed; its ratio measured again
    else:
        # Both ratios were measured once, by the dead worker; the rescuer told its last trial
        # the value the committed measurements give, and wrote the recommendation.
        assert failed == [] and len(trials) == 2
        assert all(t.values is not None for t in trials)


def test_a_trajectory_whose_worker_is_killed_restarts_elsewhere_and_counts_once(
    db_url: str, env: dict[str, str], procs: Procs, sweep_assets: SweepAssets, tmp_path: Path
) -> None:
    settings = Settings(
        home=tmp_path / "home", database_url=db_url, allowed_roots=[sweep_assets.root]
    )
    trajectory = {"steps": 12, "measure_every": 2}
    body = sweep_assets.spec(ratios=[0.5], batches=1, trajectory=trajectory, planned_steps=12)
    sweep_id = submit(settings, body)
    doomed = procs.start("doomed", "-m", "sharpmix.cli", "worker", "--id", "doomed")

    def stepping() -> bool:
        _, tasks = sweep_state(db_url, sweep_id)
        return any(t.kind == TaskKind.trajectory and t.steps_done >= 2 for t in tasks)

    wait_until(stepping, "the first worker is part-way through the trajectory")
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    procs.start("heir", "-m", "sharpmix.cli", "worker", "--id", "heir")
    wait_until(lambda: sweep_state(db_url, sweep_id)[0].is_final, "the sweep ends")

    engine = make_engine(db_url)
    with make_session_factory(engine)() as session:
        sweep = session.get_one(Sweep, sweep_id)
        assert sweep.state == SweepState.succeeded, sweep.error
        assert sweep.optimizer_steps == 12  # the killed worker's steps are not counted
        task = session.scalars(
            select(SweepTask).where(
                SweepTask.sweep_id == sweep_id, SweepTask.kind == TaskKind.trajectory
            )
        ).one()
        assert task.worker_id == "heir" and task.steps_done == 12
        steps = session.scalars(
            select(TrajectoryPoint.step)
            .where(TrajectoryPoint.task_id == task.id, TrajectoryPoint.eval_set == "general")
            .order_by(TrajectoryPoint.step)
        ).all()
        assert steps == [0, 2, 4, 6, 8, 10, 12]  # one clean run, from step 0
    engine.dispose()
    study = optuna.load_study(study_name=f"sharpmix-{sweep_id}-trajectory", storage=db_url)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert optuna.trial.TrialState.RUNNING not in states
    assert states.count(optuna.trial.TrialState.COMPLETE) == 1
