"""The job queue on SQLite and PostgreSQL: exclusive claims, leases, exactly-once completion."""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import replace

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from contract.recommendation import Recommendation
from contract.results import (
    BatchResult,
    MeasurementResult,
    PointResult,
    Status,
    TaskResult,
    TrajectoryResult,
)
from contract.spec import Role, SweepSpec
from contract.states import SweepState, TaskKind, TaskState
from service.db import queue, sweeps
from service.db.engine import make_engine, make_session_factory
from service.db.models import Measurement, Sweep, SweepTask, Tenant, TrajectoryPoint

pytestmark = pytest.mark.db

SPEC = SweepSpec.model_validate(
    {
        "model": {"path": "model"},
        "pretraining": {"name": "pt", "path": "pt.jsonl"},
        "finetuning": [{"name": "ft", "path": "ft.jsonl"}],
        "ratios": [0.0, 0.5, 1.0],
        "learning_rate": 1e-4,
        "seq_len": 16,
        "batch_tokens": 64,
    }
)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


def add_sweep(sessions: sessionmaker[Session], ratios: list[float]) -> str:
    spec = SPEC.model_copy(update={"ratios": ratios})
    with sessions() as session:
        tenant = session.scalar(select(Tenant).where(Tenant.name == "t")) or Tenant(name="t")
        session.add(tenant)
        session.flush()
        sweep = Sweep(
            id=uuid.uuid4().hex,
            tenant_id=tenant.id,
            spec=spec.model_dump(mode="json"),
            spec_sha256=spec.sha256(),
            study_name="s",
            tasks_total=len(ratios),
        )
        session.add(sweep)
        session.add_all(SweepTask(sweep_id=sweep.id, slot=i, ratio=r) for i, r in enumerate(ratios))
        session.commit()
        return sweep.id


def result_for(task: queue.ClaimedTask) -> TaskResult:
    assert task.candidate is not None
    measurement = MeasurementResult(
        eval_set="pt",
        role=Role.pretraining,
        status=Status.ok,
        eta_c=1e-3,
        eta_c_low=9e-4,
        eta_c_high=1.1e-3,
        sharpness=2e3,
        spread=0.1,
        loss=2.0,
        loss_change=-0.01,
        forwards=6,
        batches=1,
        per_batch=[BatchResult(1e-3, 9e-4, 1.1e-3, Status.ok, 6, 2.0, -0.01)],
    )
    return TaskResult(
        ratio=task.candidate.ratio, measurements=[measurement], forwards=6, backwards=2, seconds=0.5
    )


def recommend(
    spec: SweepSpec, measurements: list[Measurement], *, trajectories: Sequence[SweepTask] = ()
) -> Recommendation:
    return Recommendation(
        objective=spec.objective,
        ratio=min((m.ratio for m in measurements), default=None),
        reason=f"{len(measurements)} measurements",
        learning_rate=spec.learning_rate,
        in_basin=True,
        max_stable_lr=1e-3,
        flat_ratio=0.0,
        balanced_ratio=0.0,
        least_forgetting_ratio=0.0,
        confidence="high",
    )


def test_claims_in_order_and_finishes_the_sweep(sessions: sessionmaker[Session]) -> None:
    sweep_id = add_sweep(sessions, [0.0, 0.5])
    first = queue.claim_task(sessions, "w1", lease_seconds=60)
    second = queue.claim_task(sessions, "w2", lease_seconds=60)
    assert first is not None and second is not None
    assert (first.slot, second.slot) == (0, 1)
    assert queue.claim_task(sessions, "w3", lease_seconds=60) is None
    with sessions() as session:
        assert session.get_one(Sweep, sweep_id).state == SweepState.running

    assert queue.complete_task(sessions, second, "w2", result_for(second), recommend)
    with sessions() as session:
        assert session.get_one(Sweep, sweep_id).state == SweepState.running
    assert queue.complete_task(sessions, first, "w1", result_for(first), recommend)
    with sessions() as session:
        sweep = session.get_one(Sweep, sweep_id)
        assert sweep.state == SweepState.succeeded
        assert sweep.tasks_done == 2 and sweep.forwards == 12 and sweep.backwards == 4
        assert sweep.recommendation is not None
        assert sweep.recommendation["reason"] == "2 measurements"


def test_concurrent_workers_never_share_a_task(engine: Engine) -> None:
    sessions = make_session_factory(engine)
    add_sweep(sessions, [i / 19 for i in range(20)])
    claimed: list[int] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        while (task := queue.claim_task(sessions, name, lease_seconds=60)) is not None:
            with lock:
                claimed.append(task.task_id)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(set(claimed))
    assert len(claimed) == 20


def test_dead_workers_task_is_taken_over_and_counted_once(
    sessions: sessionmaker[Session],
) -> None:
    sweep_id = add_sweep(sessions, [0.5])
    dead = queue.claim_task(sessions, "dead", lease_seconds=60)
    assert dead is not None
    assert queue.claim_task(sessions, "alive", lease_seconds=60) is None  # lease still valid
    time.sleep(0.05)
    alive = queue.claim_task(sessions, "alive", lease_seconds=0.01)  # the lease has run out
    assert alive is not None and alive.task_id == dead.task_id and alive.attempts == 2

    # The dead worker wakes up: it has lost the task and cannot write its results.
    assert queue.heartbeat(sessions, dead.task_id, "dead") == queue.Heartbeat.lost
    assert not queue.complete_task(sessions, dead, "dead", result_for(dead), recommend)
    assert queue.heartbeat(sessions, alive.task_id, "alive") == queue.Heartbeat.ok
    assert queue.complete_task(sessions, alive, "alive", result_for(alive), recommend)
    with sessions() as session:
        assert session.scalar(select(func.count(Measurement.id))) == 1
        sweep = session.get_one(Sweep, sweep_id)
        assert sweep.tasks_done == 1 and sweep.state == SweepState.succeeded


def test_release_hands_back_without_counting_a_try(sessions: sessionmaker[Session]) -> None:
    add_sweep(sessions, [0.5])
    task = queue.claim_task(sessions, "w1", lease_seconds=60)
    assert task is not None
    queue.release_task(sessions, task.task_id, "w1")
    again = queue.claim_task(sessions, "w2", lease_seconds=60)
    assert again is not None and again.task_id == task.task_id and again.attempts == 1


def test_retryable_failure_requeues_then_fails_the_sweep(sessions: sessionmaker[Session]) -> None:
    sweep_id = add_sweep(sessions, [0.0, 1.0])
    task = queue.claim_task(sessions, "w1", lease_seconds=60)
    assert task is not None
    queue.fail_task(sessions, task, "w1", "CUDA error", retry=True, max_attempts=2)
    retried = queue.claim_task(sessions, "w1", lease_seconds=60)
    assert retried is not None and retried.task_id == task.task_id and retried.attempts == 2
    queue.fail_task(sessions, retried, "w1", "CUDA error again", retry=True, max_attempts=2)
    with sessions() as session:
        sweep = session.get_one(Sweep, sweep_id)
        assert sweep.state == SweepState.failed and sweep.error == "CUDA error again"
        states = {t.state for t in sweep.tasks}
        assert states == {TaskState.failed, TaskState.cancelled}
    assert queue.claim_task(sessions, "w1", lease_seconds=60) is None


def test_user_error_fails_at_once(sessions: sessionmaker[Session]) -> None:
    sweep_id = add_sweep(sessions, [0.0])
    task = queue.claim_task(sessions, "w1", lease_seconds=60)
    assert task is not None
    queue.fail_task(
        sessions, task, "w1", "pretraining.path: no such file", retry=False, max_attempts=3
    )
    with sessions() as session:
        assert session.get_one(Sweep, sweep_id).state == SweepState.failed


def test_heartbeat_reports_a_cancel_request(sessions: sessionmaker[Session]) -> None:
    sweep_id = add_sweep(sessions, [0.0, 1.0])
    task = queue.claim_task(sessions, "w1", lease_seconds=60)
    assert task is not None
    with sessions() as session:
        session.get_one(Sweep, sweep_id).cancel_requested = True
        session.commit()
    assert queue.heartbeat(sessions, task.task_id, "w1") == queue.Heartbeat.cancel
    assert queue.claim_task(sessions, "w2", lease_seconds=60) is None
    queue.cancel_sweep_tasks(sessions, sweep_id)
    with sessions() as session:
        sweep = session.get_one(Sweep, sweep_id)
        assert sweep.state == SweepState.cancelled
        assert {t.state for t in sweep.tasks} == {TaskState.cancelled}


def test_non_finite_numbers_are_stored_on_every_backend(sessions: sessionmaker[Session]) -> None:
    sweep_id = add_sweep(sessions, [0.0])
    task = queue.claim_task(sessions, "w1", lease_seconds=60)
    assert task is not None
    base = result_for(task)
    rising = replace(
        base.measurements[0],
        status=Status.increases_immediately,
        eta_c=None,
        sharpness=float("inf"),
        per_batch=[
            BatchResult(0.0, 0.0, float("inf"), Status.increases_immediately, 3, 2.0, math.nan)
        ],
    )
    result = TaskResult(ratio=0.0, measurements=[rising], forwards=3, backwards=1, seconds=0.1)
    assert queue.complete_task(sessions, task, "w1", result, recommend)
    with sessions() as session:
        row = session.scalars(select(Measurement).where(Measurement.sweep_id == sweep_id)).one()
        assert row.per_batch == [
            {
                "eta_c": 0.0,
                "lower": 0.0,
                "upper": None,
                "status": "increases_immediately",
                "forwards": 3,
                "loss0": 2.0,
                "loss_change": None,
            }
        ]
        assert row.sharpness == float("inf")


def test_cancel_of_a_dead_workers_sweep_is_carried_out(sessions: sessionmaker[Session]) -> None:
    sweep_id = add_sweep(sessions, [0.0, 1.0])
    task = queue.claim_task(sessions, "dead", lease_seconds=60)
    assert task is not None
    with sessions() as session:
        session.get_one(Sweep, sweep_id).cancel_requested = True
        session.commit()
    # While the lease holds, the worker may still see the request at its heartbeat.
    assert queue.claim_task(sessions, "w2", lease_seconds=60) is None
    with sessions() as session:
        assert session.get_one(Sweep, sweep_id).state == SweepState.running
    time.sleep(0.05)
    assert queue.end_abandoned_cancels(sessions, lease_seconds=60) == 0
    time.sleep(0.05)
    # The lease ran out without a heartbeat: the workers' housekeeping pass ends the sweep.
    assert queue.end_abandoned_cancels(sessions, lease_seconds=0.01) == 1
    assert queue.claim_task(sessions, "w2", lease_seconds=0.01) is None
    with sessions() as session:
        sweep = session.get_one(Sweep, sweep_id)
        assert sweep.state == SweepState.cancelled
        assert {t.state for t in sweep.tasks} == {TaskState.cancelled}


def point(step: int, drift: float) -> PointResult:
    return PointResult(
        step=step,
        lr=1e-3,
        eval_set="pt",
        role=Role.pretraining,
        status=Status.ok,
        loss=2.0 + drift,
        drift=drift,
        eta_c=1e-3,
        eta_c_low=9e-4,
        eta_c_high=1.1e-3,
        loss_change=-1e-4,
        forwards=5,
    )


def test_a_taken_over_trajectory_restarts_and_counts_once(sessions: sessionmaker[Session]) -> None:
    sweep_id = add_sweep(sessions, [0.5])
    with sessions() as session:  # the measurement task is done; one trajectory is left
        task = session.scalars(select(SweepTask).where(SweepTask.sweep_id == sweep_id)).one()
        task.state = TaskState.done
        session.add(SweepTask(sweep_id=sweep_id, slot=1, ratio=0.5, kind=TaskKind.trajectory))
        sweep = session.get_one(Sweep, sweep_id)
        sweep.tasks_total, sweep.tasks_done = 2, 1
        session.commit()
    stale = queue.claim_task(sessions, "stale", lease_seconds=60)
    assert stale is not None and stale.kind == TaskKind.trajectory
    assert queue.start_trajectory(sessions, stale, "stale")
    assert queue.record_points(sessions, stale, "stale", 0.5, 0, [point(0, 0.0)])
    assert queue.record_points(sessions, stale, "stale", 0.5, 10, [point(10, 0.01)])
    time.sleep(1.1)
    fresh = queue.claim_task(sessions, "fresh", lease_seconds=1)  # the lease ran out
    assert fresh is not None and fresh.task_id == stale.task_id
    assert queue.start_trajectory(sessions, fresh, "fresh")
    with sessions() as session:  # the earlier owner's points are gone: a clean restart
        assert session.scalar(select(func.count()).select_from(TrajectoryPoint)) == 0
    # The stalled worker wakes up: none of its writes land.
    assert not queue.record_points(sessions, stale, "stale", 0.5, 20, [point(20, 0.02)])
    result = TrajectoryResult(
        ratio=0.5, steps_done=20, pruned=False, forecast=[], forwards=30, backwards=20, seconds=1.0
    )
    assert not queue.complete_trajectory(sessions, stale, "stale", result, recommend)
    assert queue.record_points(sessions, fresh, "fresh", 0.5, 0, [point(0, 0.0)])
    assert queue.record_points(sessions, fresh, "fresh", 0.5, 20, [point(20, 0.005)])
    assert queue.complete_trajectory(sessions, fresh, "fresh", result, recommend)
    assert not queue.complete_trajectory(sessions, fresh, "fresh", result, recommend)
    assert not queue.finalize_sweep(sessions, sweep_id, recommend)  # finished once already
    with sessions() as session:
        sweep = session.get_one(Sweep, sweep_id)
        assert sweep.state == SweepState.succeeded, sweep.error
        assert sweep.optimizer_steps == 20 and sweep.backwards == 20 and sweep.forwards == 30
        steps = session.scalars(select(TrajectoryPoint.step).order_by(TrajectoryPoint.step)).all()
        assert steps == [0, 20]


def test_a_stalled_worker_can_neither_fail_nor_touch_the_new_owners_task(
    sessions: sessionmaker[Session],
) -> None:
    sweep_id = add_sweep(sessions, [0.5])
    stalled = queue.claim_task(sessions, "stalled", lease_seconds=60)
    assert stalled is not None
    time.sleep(0.05)
    owner = queue.claim_task(sessions, "owner", lease_seconds=0.01)
    assert owner is not None and owner.task_id == stalled.task_id

    # Every write of the stalled worker matches no row, whatever its attempts count says.
    assert not queue.record_trial(sessions, stalled.task_id, "stalled", 7)
    assert not queue.fail_task(sessions, stalled, "stalled", "boom", retry=True, max_attempts=1)
    assert not queue.fail_task(sessions, stalled, "stalled", "boom", retry=False, max_attempts=3)
    assert not queue.release_task(sessions, stalled.task_id, "stalled")
    with sessions() as session:
        task = session.get_one(SweepTask, stalled.task_id)
        assert (task.state, task.worker_id, task.error) == (TaskState.running, "owner", None)
        assert session.get_one(Sweep, sweep_id).state == SweepState.running

    assert queue.complete_task(sessions, owner, "owner", result_for(owner), recommend)
    # Resumed after the new owner finished: still nothing it can fail.
    assert not queue.fail_task(sessions, stalled, "stalled", "late", retry=False, max_attempts=3)
    with sessions() as session:
        assert session.get_one(SweepTask, stalled.task_id).state == TaskState.done
        sweep = session.get_one(Sweep, sweep_id)
        assert sweep.state == SweepState.succeeded and sweep.error is None


def test_the_stalled_task_pass_requeues_a_dead_workers_task(
    sessions: sessionmaker[Session],
) -> None:
    add_sweep(sessions, [0.5])
    stalled = queue.claim_task(sessions, "stalled", lease_seconds=60)
    assert stalled is not None
    assert queue.record_trial(sessions, stalled.task_id, "stalled", 3)
    assert queue.requeue_stalled_tasks(sessions, lease_seconds=60) == 0  # the lease holds
    time.sleep(0.05)
    assert queue.requeue_stalled_tasks(sessions, lease_seconds=0.01) == 1
    with sessions() as session:
        task = session.get_one(SweepTask, stalled.task_id)
        assert (task.state, task.worker_id, task.heartbeat_at) == (TaskState.queued, None, None)
    # The stalled worker learns it at its next heartbeat, and none of its writes land.
    assert queue.heartbeat(sessions, stalled.task_id, "stalled") is queue.Heartbeat.lost
    assert not queue.fail_task(sessions, stalled, "stalled", "boom", retry=False, max_attempts=3)
    heir = queue.claim_task(sessions, "heir", lease_seconds=60)
    assert heir is not None and heir.task_id == stalled.task_id
    assert heir.optuna_trial_number == 3 and heir.attempts == 2  # its trial is closed from here


def test_an_idle_cancel_moves_states_by_the_transition_table(
    sessions: sessionmaker[Session],
) -> None:
    sweep_id = add_sweep(sessions, [0.0, 1.0])
    with sessions() as session:
        tenant_id = session.get_one(Sweep, sweep_id).tenant_id
        sweep = sweeps.request_cancel(session, tenant_id, sweep_id)
        assert sweep.state == SweepState.cancelled and sweep.finished_at is not None
    with sessions() as session:
        tasks = session.scalars(select(SweepTask).where(SweepTask.sweep_id == sweep_id)).all()
        assert {t.state for t in tasks} == {TaskState.cancelled}
        # A final sweep is not moved again, by the API or by a queue pass.
        assert not queue.end_sweep_without_commit(session, sweep_id, SweepState.failed, "late")


def test_the_recommendation_is_computed_with_no_lock_held(
    engine: Engine, sessions: sessionmaker[Session]
) -> None:
    sweep_id = add_sweep(sessions, [0.5])
    task = queue.claim_task(sessions, "w1", lease_seconds=60)
    assert task is not None
    writable: list[bool] = []

    def finalize(spec: SweepSpec, measurements: list[Measurement], **_: object) -> Recommendation:
        # Another connection takes the sweep's row lock without waiting: nothing holds it.
        with engine.connect() as other:
            if engine.dialect.name == "postgresql":
                other.exec_driver_sql("SET lock_timeout = '300ms'")
                other.execute(select(Sweep.id).where(Sweep.id == sweep_id).with_for_update())
            else:
                other.exec_driver_sql("PRAGMA busy_timeout = 300")
                other.execute(select(Sweep.id))  # BEGIN IMMEDIATE: the database's write lock
            other.commit()
        writable.append(True)
        return recommend(spec, measurements)

    assert queue.complete_task(sessions, task, "w1", result_for(task), finalize)
    assert writable == [True]
    with sessions() as session:
        assert session.get_one(Sweep, sweep_id).state == SweepState.succeeded


def test_a_sweep_left_unfinalized_by_a_dead_worker_is_found_and_finished_once(
    sessions: sessionmaker[Session],
) -> None:
    sweep_id = add_sweep(sessions, [0.0, 1.0])
    first = queue.claim_task(sessions, "w1", lease_seconds=60)
    assert first is not None
    assert queue.complete_task(sessions, first, "w1", result_for(first))
    assert queue.sweeps_to_finish(sessions) == []  # a task is still queued
    assert not queue.finalize_sweep(sessions, sweep_id, recommend)
    last = queue.claim_task(sessions, "w1", lease_seconds=60)
    assert last is not None
    # The worker commits the last task and dies before finalizing.
    assert queue.complete_task(sessions, last, "w1", result_for(last))
    pending = queue.sweeps_to_finish(sessions)
    assert [p.sweep_id for p in pending] == [sweep_id] and pending[0].spec.ratios == [0.0, 1.0]
    assert queue.finalize_sweep(sessions, sweep_id, recommend)
    assert not queue.finalize_sweep(sessions, sweep_id, recommend)  # the second one is a no-op
    assert queue.sweeps_to_finish(sessions) == []
    with sessions() as session:
        sweep = session.get_one(Sweep, sweep_id)
        assert sweep.state == SweepState.succeeded and sweep.recommendation is not None


def test_a_failing_rule_fails_the_sweep_instead_of_leaving_it_running(
    sessions: sessionmaker[Session],
) -> None:
    sweep_id = add_sweep(sessions, [0.5])
    task = queue.claim_task(sessions, "w1", lease_seconds=60)
    assert task is not None

    def broken(spec: SweepSpec, measurements: list[Measurement], **_: object) -> Recommendation:
        raise ZeroDivisionError("no candidates")

    assert queue.complete_task(sessions, task, "w1", result_for(task), broken)
    with sessions() as session:
        sweep = session.get_one(Sweep, sweep_id)
        assert sweep.state == SweepState.failed
        assert sweep.error is not None and "no candidates" in sweep.error


def test_trial_records_tell_live_trials_from_done_ones(sessions: sessionmaker[Session]) -> None:
    sweep_id = add_sweep(sessions, [0.0, 0.5, 1.0])
    done = queue.claim_task(sessions, "w1", lease_seconds=60)
    live = queue.claim_task(sessions, "w2", lease_seconds=60)
    mine = queue.claim_task(sessions, "w3", lease_seconds=60)
    assert done is not None and live is not None and mine is not None
    for task, worker, number in ((done, "w1", 0), (live, "w2", 1), (mine, "w3", 2)):
        assert queue.record_trial(sessions, task.task_id, worker, number)
    finished = TaskResult(**{**vars(result_for(done)), "optuna_trial_number": 0})
    assert queue.complete_task(sessions, done, "w1", finished)

    records = queue.trial_records(sessions, sweep_id, lease_seconds=60, task_id=mine.task_id)
    assert records.live == frozenset({1})
    assert list(records.done) == [0]
    assert records.done[0].ratio == 0.0 and not records.done[0].pruned
    assert [m.eval_set for m in records.done[0].measurements] == ["pt"]
    # Once the lease has run out, nobody's trial is live.
    time.sleep(0.05)
    stale = queue.trial_records(sessions, sweep_id, lease_seconds=0.01, task_id=None)
    assert stale.live == frozenset()
