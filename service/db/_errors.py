"""Transactions of the db layer, and where database exceptions become domain errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import InterfaceError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from service.errors import DatabaseError


@contextmanager
def database_errors(action: str) -> Iterator[None]:
    """Turn a lost connection, a lock timeout or a missing table (an unmigrated database: SQLite
    says OperationalError, PostgreSQL ProgrammingError) into :class:`DatabaseError`.

    Integrity errors pass through: callers decide what a violated constraint means (an existing
    tenant, a replayed Idempotency-Key).

    Args:
        action: What was being done, for the message (``"create the sweep"``).

    Raises:
        DatabaseError: naming the action and the driver's reason.
    """
    try:
        yield
    except (OperationalError, InterfaceError, ProgrammingError) as exc:
        raise DatabaseError(
            f"could not {action}: {exc.orig}. Check that the database is running and migrated "
            "(`sharpmix db upgrade`)."
        ) from exc


@contextmanager
def transaction(session: Session, action: str) -> Iterator[None]:
    """One short transaction: translate database errors, then commit.

    Readers commit too. SQLite opens every transaction with ``BEGIN IMMEDIATE`` (the write lock),
    so a read left open for the rest of a request would stall every worker until the response is
    rendered. Sessions keep loaded attributes after commit, so the rows stay usable.

    Args:
        session: The session whose transaction this is.
        action: What is being done, for the error message.
    """
    with database_errors(action):
        yield
        session.commit()
