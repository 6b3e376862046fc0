"""Engines and sessions for the embedded SQLite file and for PostgreSQL.

A database that stops answering must cost a caller a bounded wait and a clear error, never a
thread parked forever. On PostgreSQL four limits see to it:

- connecting gives up after ``connect`` seconds (libpq's ``connect_timeout``);
- waiting for a free pooled connection gives up after ``pool`` seconds (SQLAlchemy raises
  ``TimeoutError``, which the db layer turns into a 503 with a hint);
- the server cancels a statement after ``statement`` seconds and ends a session left idle inside
  a transaction (a stalled worker holding a row lock) after twice that;
- a server that is not there to cancel anything (stopped, or behind a network that dropped the
  connection without a reset) is caught by a watchdog thread on our side: a connection checked
  out for longer than ``statement + connect`` seconds has its socket shut down, which wakes the
  blocked driver call with an error and gets the connection discarded. No legitimate checkout is
  that long: every transaction of the service and the workers is a few statements.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker


@dataclass(frozen=True)
class Timeouts:
    """How long a database may take, in seconds (see the module docstring).

    Attributes:
        connect: To open a connection.
        statement: For one statement (PostgreSQL's ``statement_timeout``).
        pool: To wait for a free connection of the pool.
    """

    connect: float = 5.0
    statement: float = 15.0
    pool: float = 5.0

    @classmethod
    def of(cls, settings: Any) -> Timeouts:
        """The limits an operator set (``SHARPMIX_DATABASE_*_TIMEOUT`` of `service.config`)."""
        return cls(
            connect=settings.database_connect_timeout,
            statement=settings.database_statement_timeout,
            pool=settings.database_pool_timeout,
        )

    @property
    def checkout_limit(self) -> float:
        """Longest a connection may stay checked out before the watchdog cuts it."""
        return self.statement + self.connect


def make_engine(url: str, timeouts: Timeouts | None = None) -> Engine:
    """Create an engine with the settings each backend needs for a job queue.

    SQLite: WAL (readers never block the writer), foreign keys on, a generous busy timeout, and
    every transaction opened with ``BEGIN IMMEDIATE`` so that two processes claiming work are
    serialised by the database file's write lock instead of failing on a lock upgrade.
    PostgreSQL: pre-ping, so a worker survives a database restart between tasks, and the limits
    of `Timeouts`.

    Args:
        url: SQLAlchemy URL (``sqlite:///path`` or ``postgresql+psycopg://...``).
        timeouts: The limits; the defaults of `Timeouts` when None.

    Returns:
        The engine.
    """
    limits = timeouts or Timeouts()
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": 60, "check_same_thread": False, "isolation_level": None},
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    statement_ms = max(1, round(limits.statement * 1000))
    engine = create_engine(
        url,
        # The watchdog's checkout hook pings instead: SQLAlchemy's own pre-ping runs before any
        # hook, where a hung server would hold it forever.
        pool_pre_ping=False,
        pool_size=5,
        max_overflow=5,
        pool_timeout=limits.pool,
        connect_args={
            "connect_timeout": max(1, math.ceil(limits.connect)),
            "options": f"-c statement_timeout={statement_ms} "
            f"-c idle_in_transaction_session_timeout={2 * statement_ms}",
        },
    )
    _WATCHDOG.watch(engine, limits.checkout_limit)
    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded attributes after commit (rows cross into the API layer)."""
    return sessionmaker(engine, expire_on_commit=False)


_RETURNED_AT = "sharpmix_returned_at"
_PING_AFTER_IDLE = 1.0  # seconds in the pool after which a connection is pinged at checkout


class _CheckoutWatchdog:
    """Cuts the socket of connections checked out for longer than their engine's limit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # connection record id -> (deadline on the monotonic clock, socket file descriptor)
        self._out: dict[int, tuple[float, int]] = {}
        self._thread: threading.Thread | None = None

    def watch(self, engine: Engine, limit: float) -> None:
        @event.listens_for(engine, "checkout")
        def _checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
            now = time.monotonic()
            with self._lock:
                self._out[id(record)] = (now + limit, dbapi_connection.fileno())
                self._start()
            # A connection that sat in the pool may have died with a server restart: ping it
            # (under the watchdog) and let the pool open a fresh one if it did. One that was in
            # use a moment ago is not pinged, so a busy server pays no extra round trip.
            if now - record.info.get(_RETURNED_AT, now) < _PING_AFTER_IDLE:
                return
            try:
                alive = engine.dialect.do_ping(dbapi_connection)
            except Exception as exc:
                with self._lock:
                    self._out.pop(id(record), None)
                raise DisconnectionError("pooled connection is dead") from exc
            if not alive:
                with self._lock:
                    self._out.pop(id(record), None)
                raise DisconnectionError("pooled connection is dead")

        @event.listens_for(engine, "checkin")
        def _checkin(_dbapi_connection: Any, record: Any) -> None:
            record.info[_RETURNED_AT] = time.monotonic()
            with self._lock:
                self._out.pop(id(record), None)

        @event.listens_for(engine, "invalidate")
        def _invalidate(_dbapi_connection: Any, record: Any, _exc: Any) -> None:
            with self._lock:
                self._out.pop(id(record), None)

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="sharpmix-db-watchdog", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(0.5)
            now = time.monotonic()
            with self._lock:
                overdue = [key for key, (deadline, _) in self._out.items() if deadline <= now]
                for key in overdue:
                    _, fileno = self._out.pop(key)
                    _shut_down(fileno)


def _shut_down(fileno: int) -> None:
    # A duplicate descriptor, so closing our handle leaves the driver's own descriptor to it.
    try:
        sock = socket.socket(fileno=os.dup(fileno))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


_WATCHDOG = _CheckoutWatchdog()
