"""The sweep store: creation with tasks, idempotency, tenant scoping, pagination, cancellation."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from contract.spec import SweepSpec
from contract.states import SweepState, TaskState
from service.db import sweeps, tenants
from service.db.engine import make_engine, make_session_factory
from service.db.models import Sweep, SweepTask, utcnow
from service.errors import (
    ConflictError,
    DatabaseError,
    IdempotencyMismatchError,
    InvalidRequestError,
    NotFoundError,
)
from tests.service.support import sweep_body

pytestmark = pytest.mark.db


@pytest.fixture
def tenant_id(session: Session) -> int:
    return tenants.create_tenant(session, "acme").id


def spec(**changes: object) -> SweepSpec:
    return SweepSpec.model_validate(sweep_body(**changes))


def tasks_of(session: Session, sweep_id: str) -> list[SweepTask]:
    query = select(SweepTask).where(SweepTask.sweep_id == sweep_id).order_by(SweepTask.slot)
    return list(session.scalars(query))


def test_a_sweep_gets_one_queued_task_per_ratio(session: Session, tenant_id: int) -> None:
    request = spec(ratios=[0.0, 0.3, 0.9])
    sweep, created = sweeps.create_sweep(session, tenant_id, request, None)
    assert created
    assert len(sweep.id) == 32
    assert sweep.study_name == f"sharpmix-{sweep.id}"
    assert sweep.spec == request.model_dump(mode="json")
    assert sweep.spec_sha256 == request.sha256()
    assert (sweep.state, sweep.tasks_total, sweep.tasks_done) == (SweepState.queued, 3, 0)
    tasks = tasks_of(session, sweep.id)
    assert [(t.slot, t.ratio, t.state) for t in tasks] == [
        (0, 0.0, TaskState.queued),
        (1, 0.3, TaskState.queued),
        (2, 0.9, TaskState.queued),
    ]


def test_a_range_leaves_ratios_to_the_sampler(session: Session, tenant_id: int) -> None:
    request = spec(ratios=None, ratio_range={"low": 0.0, "high": 0.5, "trials": 4})
    sweep, _ = sweeps.create_sweep(session, tenant_id, request, None)
    assert [t.ratio for t in tasks_of(session, sweep.id)] == [None] * 4


def test_idempotency_key_replays_and_refuses_another_body(session: Session, tenant_id: int) -> None:
    first, created = sweeps.create_sweep(session, tenant_id, spec(), "key-1")
    again, created_again = sweeps.create_sweep(session, tenant_id, spec(), "key-1")
    assert (created, created_again, again.id) == (True, False, first.id)
    with pytest.raises(IdempotencyMismatchError, match="different body"):
        sweeps.create_sweep(session, tenant_id, spec(learning_rate=0.1), "key-1")
    # Keys belong to a tenant: another tenant's same key is a new sweep.
    other = tenants.create_tenant(session, "other").id
    assert sweeps.create_sweep(session, other, spec(), "key-1")[0].id != first.id
    assert session.scalar(select(Sweep.id).where(Sweep.idempotency_key == "key-1")) is not None


def test_another_tenants_sweep_does_not_exist(session: Session, tenant_id: int) -> None:
    sweep, _ = sweeps.create_sweep(session, tenant_id, spec(), None)
    other = tenants.create_tenant(session, "other").id
    for call in (sweeps.get_sweep, sweeps.list_measurements, sweeps.request_cancel):
        with pytest.raises(NotFoundError):
            call(session, other, sweep.id)
    with pytest.raises(NotFoundError):
        sweeps.get_sweep(session, tenant_id, "not-an-id\x00")
    assert sweeps.list_sweeps(session, other, 10) == ([], None)


def test_pages_are_newest_first_without_gaps(session: Session, tenant_id: int) -> None:
    made = [sweeps.create_sweep(session, tenant_id, spec(seed=i), None)[0].id for i in range(5)]
    seen: list[str] = []
    cursor = None
    for _ in range(3):
        page, cursor = sweeps.list_sweeps(session, tenant_id, 2, cursor)
        seen += [s.id for s in page]
    assert cursor is None
    assert seen == made[::-1]


def test_a_forged_cursor_is_refused(session: Session, tenant_id: int) -> None:
    for cursor in ("%%%", "bm90LWEtY3Vyc29y", "MjAyNi0wMS0wMXwuLi4"):
        with pytest.raises(InvalidRequestError) as caught:
            sweeps.list_sweeps(session, tenant_id, 2, cursor)
        assert (caught.value.location, caught.value.field) == ("query", "cursor")


def test_cancelling_an_untouched_sweep_is_immediate(session: Session, tenant_id: int) -> None:
    sweep, _ = sweeps.create_sweep(session, tenant_id, spec(), None)
    cancelled = sweeps.request_cancel(session, tenant_id, sweep.id)
    assert (cancelled.state, cancelled.cancel_requested) == (SweepState.cancelled, True)
    assert cancelled.finished_at is not None
    assert {t.state for t in tasks_of(session, sweep.id)} == {TaskState.cancelled}
    with pytest.raises(ConflictError, match="already cancelled"):
        sweeps.request_cancel(session, tenant_id, sweep.id)


def test_a_claimed_sweep_is_left_to_its_worker(session: Session, tenant_id: int) -> None:
    sweep, _ = sweeps.create_sweep(session, tenant_id, spec(), None)
    # A worker has claimed a task but not yet marked the sweep running.
    tasks_of(session, sweep.id)[0].state = TaskState.running
    session.commit()
    flagged = sweeps.request_cancel(session, tenant_id, sweep.id)
    assert (flagged.state, flagged.cancel_requested) == (SweepState.queued, True)
    states = [t.state for t in tasks_of(session, sweep.id)]
    assert states == [TaskState.running, TaskState.queued, TaskState.queued]


def test_a_running_sweep_is_flagged_and_a_finished_one_refused(
    session: Session, tenant_id: int
) -> None:
    running, _ = sweeps.create_sweep(session, tenant_id, spec(), None)
    running.state = SweepState.running
    held = running.tasks[0]  # a worker is inside this task: it will see the request
    held.state, held.worker_id, held.heartbeat_at = TaskState.running, "w1", utcnow()
    done, _ = sweeps.create_sweep(session, tenant_id, spec(seed=1), None)
    done.state = SweepState.succeeded
    session.commit()
    flagged = sweeps.request_cancel(session, tenant_id, running.id)
    assert (flagged.state, flagged.cancel_requested) == (SweepState.running, True)
    with pytest.raises(ConflictError, match="already succeeded"):
        sweeps.request_cancel(session, tenant_id, done.id)


def test_recommendation_waits_for_success(session: Session, tenant_id: int) -> None:
    sweep, _ = sweeps.create_sweep(session, tenant_id, spec(), None)
    with pytest.raises(ConflictError, match="is queued"):
        sweeps.get_recommendation(session, tenant_id, sweep.id)
    sweep.state, sweep.error = SweepState.failed, "out of memory on worker w1"
    session.commit()
    with pytest.raises(ConflictError, match=r"is failed.*out of memory"):
        sweeps.get_recommendation(session, tenant_id, sweep.id)


def test_counts_cover_every_state(session: Session, tenant_id: int) -> None:
    sweeps.create_sweep(session, tenant_id, spec(), None)
    by_sweep = sweeps.count_sweeps_by_state(session)
    by_task = sweeps.count_tasks_by_state(session)
    assert by_sweep == {state: int(state == SweepState.queued) for state in SweepState}
    assert by_task == {state: 3 * int(state == TaskState.queued) for state in TaskState}


def test_an_unmigrated_database_is_a_database_error(empty_db_url: str, tmp_path: Path) -> None:
    engine = make_engine(empty_db_url)
    with make_session_factory(engine)() as session, pytest.raises(DatabaseError, match="migrated"):
        sweeps.get_sweep(session, 1, "0" * 32)
    engine.dispose()
