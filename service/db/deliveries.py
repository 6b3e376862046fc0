"""The delivery outbox: one row per (finished sweep, channel, edition), claimed and retried by the
delivery loop (``service/notify``).

A sweep's final state is already durable in ``sweeps``; the loop turns each such sweep into a
delivery row the first time it sees it (``enqueue_finished``), so nothing has to be written at the
places where a sweep ends, and a process that dies between the sweep's end and the POST loses
nothing: the next loop finds the sweep without a row, or the row still pending.

Adding candidates reopens a succeeded sweep and raises its ``edition``; when it ends again, that
edition has no row yet and gets its own, with its own id. A row whose sweep has moved past its
edition before it went out is not sent (`supersede`): its answer is no longer the sweep's, and the
new edition is delivered when it ends. An edition that was reopened before the loop saw it gets
no row at all, for the same reason.

Attempts are claimed like the job queue's tasks: one statement bumps ``attempts`` and pushes
``next_attempt_at`` past the attempt's lease (``FOR UPDATE SKIP LOCKED`` on PostgreSQL), then the
transaction commits and the POST runs with no transaction open. The outcome is written only while
the row is still at the claimed attempt, so a loop whose lease ran out cannot overwrite a newer
attempt. A lease that runs out (the process died mid-POST) makes the row due again: delivery is
at least once, and receivers deduplicate by the row's id.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from contract.states import DeliveryState, SweepState
from service.db._errors import database_errors, transaction
from service.db.models import Measurement, Sweep, SweepDelivery, Tenant, utcnow
from service.db.sweeps import get_sweep

FINAL_STATES = (SweepState.succeeded, SweepState.failed, SweepState.cancelled)
# Entries kept in attempts_log; the count in ``attempts`` goes on past it.
MAX_LOGGED_ATTEMPTS = 50


@dataclass(frozen=True)
class FinishedSweep:
    """An edition of a sweep in a final state that has no delivery row on a channel yet."""

    sweep_id: str
    tenant: str
    state: SweepState
    spec: dict[str, Any]
    study_name: str
    edition: int


@dataclass(frozen=True)
class DueDelivery:
    """A delivery attempt this loop now owns until ``lease_until``."""

    id: str
    sweep_id: str
    channel: str
    edition: int
    event: str
    target: str
    attempt: int
    tenant: str
    lease_until: datetime


@dataclass(frozen=True)
class Outcome:
    """What one attempt achieved.

    Attributes:
        ok: The target accepted it (a 2xx answer, or the MLflow run is logged).
        status: The HTTP status, when there was an answer.
        error: What went wrong, in words, when not ok.
        retry: Whether another attempt may succeed (False for a refused target).
        seconds: How long the attempt took.
    """

    ok: bool
    status: int | None = None
    error: str | None = None
    retry: bool = True
    seconds: float = 0.0


Resolver = Callable[[FinishedSweep], str | None]


def enqueue_finished(
    sessions: sessionmaker[Session],
    channel: str,
    resolve: Resolver,
    *,
    since: datetime,
    limit: int = 100,
) -> int:
    """Give every sweep that ended after ``since`` and has no row on ``channel`` for its current
    edition its row.

    Args:
        sessions: Session factory.
        channel: ``webhook`` or ``mlflow``.
        resolve: The target of a sweep on this channel, or None when it has none (the row is
            then ``skipped``, so the sweep is not looked at again).
        since: Sweeps that finished before this are left alone.
        limit: Most rows written per call.

    Returns:
        Rows written (0 when another process wrote the same rows first).
    """
    with _session(sessions, "queue deliveries") as session:
        has_row = (
            select(SweepDelivery.id)
            .where(
                SweepDelivery.sweep_id == Sweep.id,
                SweepDelivery.channel == channel,
                SweepDelivery.edition == Sweep.edition,
            )
            .exists()
        )
        # Every path to a final state sets finished_at; updated_at covers a row that lacks it.
        ended = func.coalesce(Sweep.finished_at, Sweep.updated_at)
        rows = session.execute(
            select(Sweep.id, Tenant.name, Sweep.state, Sweep.spec, Sweep.study_name, Sweep.edition)
            .join(Tenant, Tenant.id == Sweep.tenant_id)
            .where(Sweep.state.in_(FINAL_STATES), ended >= since, ~has_row)
            .order_by(ended)
            .limit(limit)
        ).all()
        now = utcnow()
        for sweep_id, tenant, state, spec, study_name, edition in rows:
            target = resolve(FinishedSweep(sweep_id, tenant, state, spec, study_name, edition))
            session.add(
                SweepDelivery(
                    id=uuid.uuid4().hex,
                    sweep_id=sweep_id,
                    channel=channel,
                    edition=edition,
                    event=f"sweep.{state.value}",
                    target=target or "",
                    state=DeliveryState.pending if target else DeliveryState.skipped,
                    attempts=0,
                    next_attempt_at=now,
                    attempts_log=[],
                    last_error=None if target else f"no {channel} target for this sweep",
                )
            )
        try:
            session.commit()
        except IntegrityError:
            # Another API process queued the same editions between our read and our insert.
            session.rollback()
            return 0
        return len(rows)


def claim_due(
    sessions: sessionmaker[Session], *, lease_seconds: float, limit: int = 16
) -> list[DueDelivery]:
    """Claim up to ``limit`` pending deliveries that are due, for one attempt each.

    Args:
        sessions: Session factory.
        lease_seconds: How long the attempt may take before another loop may try again.
        limit: Most deliveries claimed at once.
    """
    now = utcnow()
    lease_until = now + timedelta(seconds=lease_seconds)
    with _session(sessions, "claim deliveries") as session:
        due = (
            select(SweepDelivery.id)
            .where(SweepDelivery.state == DeliveryState.pending)
            .where(SweepDelivery.next_attempt_at <= now)
            .order_by(SweepDelivery.next_attempt_at)
            .limit(limit)
        )
        if session.get_bind().dialect.name == "postgresql":
            due = due.with_for_update(skip_locked=True)
        claimed = session.execute(
            update(SweepDelivery)
            .where(SweepDelivery.id.in_(due.scalar_subquery()))
            .values(attempts=SweepDelivery.attempts + 1, next_attempt_at=lease_until)
            .returning(
                SweepDelivery.id,
                SweepDelivery.sweep_id,
                SweepDelivery.channel,
                SweepDelivery.edition,
                SweepDelivery.event,
                SweepDelivery.target,
                SweepDelivery.attempts,
            )
        ).all()
        tenants = {
            sweep_id: name
            for sweep_id, name in session.execute(
                select(Sweep.id, Tenant.name)
                .join(Tenant, Tenant.id == Sweep.tenant_id)
                .where(Sweep.id.in_([row.sweep_id for row in claimed]))
            )
        }
        session.commit()
    return [
        DueDelivery(
            id=row.id,
            sweep_id=row.sweep_id,
            channel=row.channel,
            edition=row.edition,
            event=row.event,
            target=row.target,
            attempt=row.attempts,
            tenant=tenants[row.sweep_id],
            lease_until=lease_until,
        )
        for row in claimed
    ]


def record_attempt(
    sessions: sessionmaker[Session],
    delivery: DueDelivery,
    outcome: Outcome,
    *,
    max_attempts: int,
    backoff: Callable[[int], float],
) -> DeliveryState | None:
    """Write the outcome of a claimed attempt: delivered, due again after a backoff, or failed.

    Args:
        sessions: Session factory.
        delivery: The claimed attempt.
        outcome: What it achieved.
        max_attempts: Attempts after which a delivery that still fails counts as failed.
        backoff: Seconds to wait after failed attempt number n (1-based).

    Returns:
        The delivery's new state, or None when the row had moved on (another loop took over after
        this attempt's lease ran out; its own outcome counts).
    """
    now = utcnow()
    with _session(sessions, "record a delivery attempt") as session:
        row = _claimed_row(session, delivery)
        if row is None:
            session.rollback()
            return None
        _log_attempt(row, delivery, outcome, now)
        if outcome.ok:
            row.state = DeliveryState.delivered
            row.delivered_at = now
        elif not outcome.retry or delivery.attempt >= max_attempts:
            row.state = DeliveryState.failed
        else:
            row.next_attempt_at = now + timedelta(seconds=backoff(delivery.attempt))
        state = row.state
        session.commit()
    return state


def supersede(
    sessions: sessionmaker[Session], delivery: DueDelivery, edition: int
) -> DeliveryState | None:
    """End a claimed delivery unsent: added candidates reopened its sweep, which is at ``edition``
    now, so the answer it would carry is not the sweep's any more.

    Returns:
        ``superseded``, or None when the row had moved on (as in `record_attempt`).
    """
    now = utcnow()
    error = (
        f"not sent: added candidates reopened the sweep after edition {delivery.edition} ended; "
        f"its edition {edition} is delivered when it ends"
    )
    with _session(sessions, "supersede a delivery") as session:
        row = _claimed_row(session, delivery)
        if row is None:
            session.rollback()
            return None
        _log_attempt(row, delivery, Outcome(ok=False, error=error, retry=False), now)
        row.state = DeliveryState.superseded
        session.commit()
    return DeliveryState.superseded


def _claimed_row(session: Session, delivery: DueDelivery) -> SweepDelivery | None:
    # The row, locked, while it is still at the claimed attempt: a loop whose lease ran out finds
    # None and writes nothing over the newer attempt.
    return session.scalars(
        select(SweepDelivery)
        .where(
            SweepDelivery.id == delivery.id,
            SweepDelivery.attempts == delivery.attempt,
            SweepDelivery.state == DeliveryState.pending,
        )
        .with_for_update()
    ).one_or_none()


def _log_attempt(
    row: SweepDelivery, delivery: DueDelivery, outcome: Outcome, now: datetime
) -> None:
    entry = {
        "attempt": delivery.attempt,
        "at": now.isoformat() + "Z",
        "status": outcome.status,
        "ok": outcome.ok,
        "error": outcome.error,
        "seconds": round(outcome.seconds, 4),
    }
    row.attempts_log = [*row.attempts_log, entry][-MAX_LOGGED_ATTEMPTS:]
    row.last_status = outcome.status
    row.last_error = outcome.error


def load_sweep(sessions: sessionmaker[Session], sweep_id: str) -> tuple[Sweep, list[Measurement]]:
    """A sweep and its measurements, read in one short transaction, for building a delivery.

    The measurements are read first: where each statement sees what was committed before it
    (PostgreSQL's read committed), a sweep still at a delivery's edition here had not been
    reopened when its measurements were read, so none of a later edition is among them.
    """
    with _session(sessions, "read the sweep for its delivery") as session:
        measurements = list(
            session.scalars(
                select(Measurement)
                .where(Measurement.sweep_id == sweep_id)
                .order_by(Measurement.ratio, Measurement.eval_set)
            )
        )
        sweep = session.get_one(Sweep, sweep_id)
        session.commit()
    return sweep, measurements


def list_deliveries(session: Session, tenant_id: int, sweep_id: str) -> list[SweepDelivery]:
    """The deliveries of one of the tenant's sweeps, by edition, oldest first.

    Raises:
        NotFoundError: when the tenant has no such sweep.
        DatabaseError: when the database cannot be reached.
    """
    get_sweep(session, tenant_id, sweep_id)
    with transaction(session, "list the sweep's deliveries"):
        rows = list(
            session.scalars(
                select(SweepDelivery)
                .where(SweepDelivery.sweep_id == sweep_id)
                .order_by(SweepDelivery.edition, SweepDelivery.created_at, SweepDelivery.channel)
            )
        )
    return rows


@contextmanager
def _session(sessions: sessionmaker[Session], action: str) -> Iterator[Session]:
    with database_errors(action), sessions() as session:
        yield session
