"""Transactions of the db layer, and where database exceptions become domain errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import (
    DisconnectionError,
    InterfaceError,
    InternalError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session

from service.errors import DatabaseError

# What the driver's reason says, and what the operator should do about it. Checked in order;
# SQLite speaks in messages, PostgreSQL also in SQLSTATE codes (the first token of the reason
# psycopg gives is not the code, so both are matched as text).
_HINTS: list[tuple[tuple[str, ...], str]] = [
    (
        ("database or disk is full", "no space left on device", "could not extend file"),
        "The database's disk is full: free space where the database stores its files.",
    ),
    (
        ("readonly database", "read-only transaction", "read-only file system"),
        "The database is read-only (a replica, a read-only file or file system): point "
        "SHARPMIX_DATABASE_URL at a writable primary, or make the file writable.",
    ),
    (
        ("no such table", "does not exist", "undefinedtable"),
        "The database is not migrated: run `sharpmix db upgrade`.",
    ),
    (
        ("statement timeout", "canceling statement", "timeout expired", "timed out"),
        "The database did not answer in time (overloaded or hung); retry shortly, and check "
        "the database server if it persists.",
    ),
]
_DEFAULT_HINT = (
    "Check that the database is running and reachable at SHARPMIX_DATABASE_URL, and migrated "
    "(`sharpmix db upgrade`)."
)
_POOL_HINT = (
    "All database connections are busy or the database is not answering; retry shortly "
    "(SHARPMIX_DATABASE_POOL_TIMEOUT sets how long a request waits)."
)


def hint_for(reason: str) -> str:
    """What to check, for a driver's error message."""
    lowered = reason.lower()
    for needles, hint in _HINTS:
        if any(needle in lowered for needle in needles):
            return hint
    return _DEFAULT_HINT


@contextmanager
def database_errors(action: str) -> Iterator[None]:
    """Turn a lost connection, a timeout, a full or read-only disk or a missing table (an
    unmigrated database: SQLite says OperationalError, PostgreSQL ProgrammingError) into
    :class:`DatabaseError`, with what to check.

    Integrity errors pass through: callers decide what a violated constraint means (an existing
    tenant, a replayed Idempotency-Key).

    Args:
        action: What was being done, for the message (``"create the sweep"``).

    Raises:
        DatabaseError: naming the action, the driver's reason and what to check.
    """
    try:
        yield
    except PoolTimeoutError as exc:
        raise DatabaseError(
            f"could not {action}: no database connection free. {_POOL_HINT}"
        ) from exc
    except DisconnectionError as exc:
        raise DatabaseError(f"could not {action}: {exc}. {_DEFAULT_HINT}") from exc
    except (OperationalError, InterfaceError, ProgrammingError, InternalError) as exc:
        reason = str(exc.orig).strip()
        raise DatabaseError(f"could not {action}: {reason}. {hint_for(reason)}") from exc


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
