"""Sweeps as the API sees them: submit (idempotently), list, read, cancel, count.

Every public function is one short transaction that ends before it returns (see
:func:`service.db._errors.transaction`); helpers named ``_..._without_commit`` run inside the
caller's. Every lookup is scoped to a tenant: another tenant's sweep is indistinguishable from one
that does not exist. The worker side of the queue (claiming, heartbeats, results) lives in
``service/db/queue.py``.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from datetime import datetime

from sqlalchemy import Engine, func, select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from contract.mix import explicit_mix, pretraining_share
from contract.recommendation import Recommendation
from contract.spec import SweepSpec
from contract.states import SweepState, TaskKind, TaskState
from service.db._errors import database_errors, transaction
from service.db.models import Measurement, Sweep, SweepTask, TrajectoryPoint
from service.db.queue import end_sweep_without_commit
from service.errors import (
    ConflictError,
    DatabaseError,
    IdempotencyMismatchError,
    InvalidRequestError,
    NotFoundError,
)


def create_sweep(
    session: Session,
    tenant_id: int,
    spec: SweepSpec,
    idempotency_key: str | None,
    *,
    fingerprint: dict[str, str] | None = None,
) -> tuple[Sweep, bool]:
    """Store a new sweep and its queued tasks, or return the one this Idempotency-Key made.

    The unique constraint on ``(tenant_id, idempotency_key)`` decides races: on SQLite the write
    lock serialises submissions, so the second one finds the first; on PostgreSQL the losers'
    inserts fail, roll back and read the winner's row.

    Args:
        session: Database session.
        tenant_id: Owner of the sweep.
        spec: The validated request (limits and paths already checked).
        idempotency_key: The client's retry key, or None.
        fingerprint: What its measurements rest on (``service/fingerprint.py``), kept so that
            candidates can be added later; None leaves that refused.

    Returns:
        The sweep, and True when this call created it (False for a replay).

    Raises:
        IdempotencyMismatchError: when the key was used before with a different spec.
        DatabaseError: when the database cannot be reached.
    """
    digest = spec.sha256()
    with database_errors("create the sweep"):
        if idempotency_key is not None:
            existing = _replayed_without_commit(session, tenant_id, idempotency_key, digest)
            if existing is not None:
                session.commit()
                return existing, False
        sweep = _add_sweep_without_commit(session, tenant_id, spec, digest, idempotency_key)
        sweep.fingerprint = fingerprint
        try:
            session.commit()
        except IntegrityError as exc:
            session.rollback()
            if idempotency_key is None:
                raise DatabaseError(f"could not store the sweep: {exc.orig}") from exc
            existing = _replayed_without_commit(session, tenant_id, idempotency_key, digest)
            session.commit()
            if existing is None:
                raise DatabaseError(f"could not store the sweep: {exc.orig}") from exc
            return existing, False
    return sweep, True


def _replayed_without_commit(
    session: Session, tenant_id: int, idempotency_key: str, digest: str
) -> Sweep | None:
    existing = session.scalars(
        select(Sweep).where(Sweep.tenant_id == tenant_id, Sweep.idempotency_key == idempotency_key)
    ).one_or_none()
    if existing is not None and existing.spec_sha256 != digest:
        raise IdempotencyMismatchError(
            f"Idempotency-Key {idempotency_key!r} was used with a different body (sweep "
            f"{existing.id}); send that body again, or use a new key for a new sweep"
        )
    return existing


def _add_sweep_without_commit(
    session: Session, tenant_id: int, spec: SweepSpec, digest: str, idempotency_key: str | None
) -> Sweep:
    sweep_id = uuid.uuid4().hex
    sweep = Sweep(
        id=sweep_id,
        tenant_id=tenant_id,
        state=SweepState.queued,
        spec=spec.model_dump(mode="json"),
        spec_sha256=digest,
        idempotency_key=idempotency_key,
        study_name=f"sharpmix-{sweep_id}",
        tasks_total=spec.slots + spec.trajectory_slots,
    )
    # A range's ratios are chosen by the sampler when a worker claims the task.
    ratios: list[float | None] = list(spec.screen_ratios) if spec.ratios else [None] * spec.slots
    sweep.tasks = [
        SweepTask(slot=slot, ratio=ratio, kind=TaskKind.measure, state=TaskState.queued)
        for slot, ratio in enumerate(ratios)
    ]
    if spec.trajectory is not None and spec.mixes is not None:
        # Listed k-domain mixes: each steps on its own weights (queue.claim_task hands them on).
        mixes = [explicit_mix(spec, slot) for slot in range(len(spec.mixes))]
        sweep.tasks += [
            SweepTask(
                slot=spec.slots + i,
                ratio=pretraining_share(spec, mix),
                weights=mix,
                kind=TaskKind.trajectory,
                state=TaskState.queued,
            )
            for i, mix in enumerate(mixes)
        ]
    elif spec.trajectory is not None and spec.ratios != "auto":
        # Listed ratios: every one gets a trajectory at once. For 'auto' the screen chooses them
        # when its last measurement lands (queue.complete_task).
        sweep.tasks += [
            SweepTask(
                slot=spec.slots + i, ratio=r, kind=TaskKind.trajectory, state=TaskState.queued
            )
            for i, r in enumerate(spec.screen_ratios)
        ]
    session.add(sweep)
    return sweep


_SWEEP_ID = re.compile(r"^[0-9a-f]{32}$")


def _encode_cursor(sweep: Sweep) -> str:
    raw = f"{sweep.created_at.isoformat()}|{sweep.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, sweep_id = raw.split("|", 1)
        if not _SWEEP_ID.match(sweep_id):
            raise ValueError(sweep_id)
        return datetime.fromisoformat(created), sweep_id
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequestError(
            "cursor",
            "not a cursor this server handed out; pass 'next_cursor' from the previous page",
            location="query",
        ) from exc


def list_sweeps(
    session: Session, tenant_id: int, limit: int, cursor: str | None = None
) -> tuple[list[Sweep], str | None]:
    """One page of the tenant's sweeps, newest first.

    Keyset pagination on ``(created_at, id)``: a page stays correct while new sweeps arrive.

    Args:
        session: Database session.
        tenant_id: Whose sweeps.
        limit: Page size.
        cursor: ``next_cursor`` of the previous page, or None for the first page.

    Returns:
        The page and the cursor of the next one (None on the last page).

    Raises:
        InvalidRequestError: when the cursor is malformed.
        DatabaseError: when the database cannot be reached.
    """
    query = select(Sweep).where(Sweep.tenant_id == tenant_id)
    if cursor is not None:
        created, sweep_id = _decode_cursor(cursor)
        query = query.where(tuple_(Sweep.created_at, Sweep.id) < tuple_(created, sweep_id))
    query = query.order_by(Sweep.created_at.desc(), Sweep.id.desc()).limit(limit + 1)
    with transaction(session, "list the sweeps"):
        rows = list(session.scalars(query))
    if len(rows) <= limit:
        return rows, None
    return rows[:limit], _encode_cursor(rows[limit - 1])


def _owned_without_commit(
    session: Session, tenant_id: int, sweep_id: str, *, lock: bool = False
) -> Sweep:
    # Anything that is not an id we hand out cannot exist; it never reaches the driver (PostgreSQL
    # refuses NUL bytes in text parameters with an error rather than "no row").
    if not _SWEEP_ID.match(sweep_id):
        raise NotFoundError(f"no sweep {sweep_id!r} (list yours with GET /v1/sweeps)")
    query = select(Sweep).where(Sweep.id == sweep_id, Sweep.tenant_id == tenant_id)
    sweep = session.scalars(query.with_for_update() if lock else query).one_or_none()
    if sweep is None:
        raise NotFoundError(f"no sweep {sweep_id!r} (list yours with GET /v1/sweeps)")
    return sweep


def get_sweep(session: Session, tenant_id: int, sweep_id: str) -> Sweep:
    """The tenant's sweep.

    Raises:
        NotFoundError: when it does not exist or belongs to another tenant.
        DatabaseError: when the database cannot be reached.
    """
    with transaction(session, "read the sweep"):
        return _owned_without_commit(session, tenant_id, sweep_id)


def peek_sweep(engine: Engine, tenant_id: int, sweep_id: str) -> Sweep:
    """The tenant's sweep, read in one statement outside any transaction: the polling path.

    ``engine`` should be in autocommit mode on PostgreSQL (as the API's read engine is), so the
    read costs one round trip instead of three (BEGIN, SELECT, COMMIT) and no ORM session. One
    row read once is a consistent snapshot without a transaction around it.

    Raises:
        NotFoundError: when it does not exist or belongs to another tenant.
        DatabaseError: when the database cannot be reached.
    """
    if not _SWEEP_ID.match(sweep_id):
        raise NotFoundError(f"no sweep {sweep_id!r} (list yours with GET /v1/sweeps)")
    query = select(*_SWEEP_COLUMNS).where(Sweep.id == sweep_id, Sweep.tenant_id == tenant_id)
    with database_errors("read the sweep"), engine.connect() as connection:
        row = connection.execute(query).one_or_none()
    if row is None:
        raise NotFoundError(f"no sweep {sweep_id!r} (list yours with GET /v1/sweeps)")
    return Sweep(**row._asdict())


_SWEEP_COLUMNS = tuple(column for column in Sweep.__table__.columns)


def list_measurements(session: Session, tenant_id: int, sweep_id: str) -> list[Measurement]:
    """Every measurement of the tenant's sweep so far, by ratio then evaluation set.

    Raises:
        NotFoundError: when the sweep does not exist or belongs to another tenant.
        DatabaseError: when the database cannot be reached.
    """
    with transaction(session, "read the measurements"):
        _owned_without_commit(session, tenant_id, sweep_id)
        return list(
            session.scalars(
                select(Measurement)
                .where(Measurement.sweep_id == sweep_id)
                .order_by(Measurement.ratio, Measurement.eval_set, Measurement.id)
            )
        )


def list_trajectories(
    session: Session, tenant_id: int, sweep_id: str
) -> tuple[Sweep, list[SweepTask], list[TrajectoryPoint]]:
    """The tenant's sweep, its trajectory tasks by ratio and their points so far, by step.

    Raises:
        NotFoundError: when the sweep does not exist or belongs to another tenant.
        DatabaseError: when the database cannot be reached.
    """
    with transaction(session, "read the trajectories"):
        sweep = _owned_without_commit(session, tenant_id, sweep_id)
        tasks = list(
            session.scalars(
                select(SweepTask)
                .where(SweepTask.sweep_id == sweep_id, SweepTask.kind == TaskKind.trajectory)
                .order_by(SweepTask.ratio, SweepTask.slot)
            )
        )
        points = list(
            session.scalars(
                select(TrajectoryPoint)
                .where(TrajectoryPoint.sweep_id == sweep_id)
                .order_by(TrajectoryPoint.task_id, TrajectoryPoint.step, TrajectoryPoint.id)
            )
        )
        return sweep, tasks, points


def get_recommendation(session: Session, tenant_id: int, sweep_id: str) -> Recommendation:
    """The recommendation of the tenant's succeeded sweep.

    Raises:
        NotFoundError: when the sweep does not exist or belongs to another tenant.
        ConflictError: while the sweep has not succeeded (the message says its state).
        DatabaseError: when the database cannot be reached.
    """
    sweep = get_sweep(session, tenant_id, sweep_id)
    if sweep.state != SweepState.succeeded or sweep.recommendation is None:
        why = f"poll GET /v1/sweeps/{sweep_id}" if not sweep.state.is_final else sweep.error
        raise ConflictError(
            f"sweep {sweep_id} is {sweep.state.value}; it has a recommendation once it has "
            f"succeeded ({why or 'no reason recorded'})"
        )
    return Recommendation.model_validate(sweep.recommendation)


def request_cancel(session: Session, tenant_id: int, sweep_id: str) -> Sweep:
    """Ask for the tenant's sweep to stop.

    A sweep with no task in a worker's hands (queued, or running between tasks) is cancelled at
    once, with its tasks. Otherwise the sweep is marked ``cancel_requested`` and the worker running
    it stops at its next heartbeat (or, if that worker died, the next claim pass ends it).

    Raises:
        NotFoundError: when the sweep does not exist or belongs to another tenant.
        ConflictError: when the sweep has already finished (the message says how).
        DatabaseError: when the database cannot be reached.
    """
    with transaction(session, "cancel the sweep"):
        # Row locks on PostgreSQL (SQLite's write lock already serialises us): a worker claiming
        # a task of this sweep right now either commits first, and we see a running task, or
        # skips the locked tasks.
        sweep = _owned_without_commit(session, tenant_id, sweep_id, lock=True)
        if sweep.state.is_final:
            raise ConflictError(f"sweep {sweep_id} already {sweep.state.value}; nothing to cancel")
        tasks = list(
            session.scalars(
                select(SweepTask).where(SweepTask.sweep_id == sweep_id).with_for_update()
            )
        )
        sweep.cancel_requested = True
        if not any(t.state == TaskState.running for t in tasks):
            _cancel_idle_without_commit(session, sweep)
    return sweep


def _cancel_idle_without_commit(session: Session, sweep: Sweep) -> None:
    # The queue's one writer of final states, guarded by the transition table like every other.
    end_sweep_without_commit(session, sweep.id, SweepState.cancelled, None)
    session.refresh(sweep)


def count_sweeps_by_state(session: Session) -> dict[SweepState, int]:
    """How many sweeps are in each state, over all tenants (for metrics); zero states included.

    Raises:
        DatabaseError: when the database cannot be reached.
    """
    with transaction(session, "count the sweeps"):
        rows = session.execute(select(Sweep.state, func.count()).group_by(Sweep.state)).all()
    counts = dict.fromkeys(SweepState, 0)
    counts.update({state: count for state, count in rows})
    return counts


def count_tasks_by_state(session: Session) -> dict[TaskState, int]:
    """How many sweep tasks are in each state, over all tenants (for metrics).

    Raises:
        DatabaseError: when the database cannot be reached.
    """
    with transaction(session, "count the tasks"):
        rows = session.execute(select(SweepTask.state, func.count()).group_by(SweepTask.state))
        pairs = rows.all()
    counts = dict.fromkeys(TaskState, 0)
    counts.update({state: count for state, count in pairs})
    return counts
