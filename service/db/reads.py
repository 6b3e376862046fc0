"""The polling read, ``GET /v1/sweeps/{id}``, on the event loop instead of the thread pool.

Clients poll a sweep every few seconds for as long as it runs, so this one read is most of the
API's traffic. Through the synchronous stack it costs a thread-pool hop (which halves the
throughput of an otherwise idle route on a small machine), an ORM session and, on PostgreSQL,
three round trips (BEGIN, SELECT, COMMIT). Here it is one prepared statement on a small asyncpg
pool (asyncpg: the asynchronous driver with the least work per query in Python; psycopg stays
the driver of everything else), under the limits of every engine (`service.db.engine.Timeouts`):
a hung database costs a bounded wait and a `DatabaseError`, never a parked request.

A sweep's spec never changes after it is stored, so it is parsed once per sweep and kept (a
bounded cache).

While the application runs (`start` in its lifespan), the rendered response of each sweep read is
kept as well, and the database is not asked again until the sweep changes. The database says when:
migration 0005 sends a notice on channel ``sharpmix_sweeps`` when a transaction that updated or
deleted a sweep row commits, and one connection of this reader listens to it and forgets that
sweep. What is kept is served only while that connection is known to work: it runs ``SELECT 1``
every `PING_SECONDS`, and when the last success is older than `LIVE_SECONDS` (a dropped connection,
a hung database) every read goes to the database again, so a database that does not answer still
gives 503s within the usual limits. A read that began before a notice (or before the listener
reconnected) is not kept, so a late answer never overwrites a newer change. A change is seen by
the listener a few milliseconds after its commit; the process's own writes (`forget`) at once.

SQLite (the embedded default, one host) keeps the synchronous path: `SweepReader.for_url`
returns None there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from contract.spec import SweepSpec
from contract.states import SweepState
from service.db.engine import Timeouts
from service.db.models import Sweep
from service.errors import DatabaseError, NotFoundError

log = logging.getLogger(__name__)

CHANNEL = "sharpmix_sweeps"  # migration 0005 notifies it with the id of each changed sweep
LISTENER_NAME = "sharpmix-sweep-changes"  # its application_name in pg_stat_activity
PING_SECONDS = 1.0  # the listener proves its connection this often
LIVE_SECONDS = 3.0  # what is kept is served only this long after the last proof
_RECONNECT_SECONDS = 1.0
_BODIES_KEPT = 4096
_SKIPPED = ("spec", "recommendation")  # read separately (spec) or not shown (recommendation)
_SPECS_KEPT = 4096
_NAMES = [c.name for c in Sweep.__table__.columns if c.name not in _SKIPPED]
_NAMES_WITH_SPEC = [*_NAMES, "spec"]


def _query(names: list[str]) -> str:
    # Our own column names, from the table definition: nothing here comes from a request.
    return f"SELECT {', '.join(names)} FROM sweeps WHERE id = $1 AND tenant_id = $2"


_QUERY = _query(_NAMES)
_QUERY_WITH_SPEC = _query(_NAMES_WITH_SPEC)


@dataclass
class _LoopState:
    slots: asyncio.Semaphore
    idle: list[asyncpg.Connection]


class SweepReader:
    """Reads one sweep of a tenant in one statement, on a few asynchronous connections.

    Args:
        conninfo: libpq connection string or URI.
        timeouts: Connect, statement and pool-wait limits.
        size: Connections at most.
    """

    def __init__(self, conninfo: str, timeouts: Timeouts, *, size: int = 4) -> None:
        self._conninfo = conninfo
        self._timeouts = timeouts
        self._size = size
        # Our own few connections rather than asyncpg's pool: its release resets every
        # connection with one more statement, which would double the round trips of a read
        # that changes no session state. Connections and the semaphore belong to the event
        # loop they were made on; an app served by two loops (a test client beside a server
        # thread) keeps one set per loop.
        self._loops: dict[asyncio.AbstractEventLoop, _LoopState] = {}
        self._specs: OrderedDict[str, SweepSpec] = OrderedDict()
        # Rendered reads by sweep id, with the tenant they belong to; see the module docstring.
        # The listener and the reads run on one event loop; `forget` may come from a thread.
        self._bodies: OrderedDict[str, tuple[int, bytes]] = OrderedDict()
        self._generation = 0  # bumped by every notice, forget and listener (re)start
        self._verified_at = -math.inf  # monotonic time of the listener's last proof
        self._listen_loop: asyncio.AbstractEventLoop | None = None
        self._listener: asyncio.Task[None] | None = None
        self._lock = threading.Lock()
        self._flights: dict[tuple[int, str], tuple[int, asyncio.Future[bytes]]] = {}

    @classmethod
    def for_url(cls, url: str, timeouts: Timeouts) -> SweepReader | None:
        """A reader for a PostgreSQL SQLAlchemy URL; None for any other backend."""
        parsed = make_url(url)
        if parsed.get_backend_name() != "postgresql":
            return None
        conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
        return cls(conninfo, timeouts)

    async def read(self, tenant_id: int, sweep_id: str) -> tuple[Sweep, SweepSpec]:
        """The tenant's sweep (not attached to any session) and its parsed spec.

        Raises:
            NotFoundError: when it does not exist or belongs to another tenant.
            DatabaseError: when the database does not answer within the limits.
        """
        spec = self._specs.get(sweep_id)
        sql, names = (_QUERY, _NAMES) if spec is not None else (_QUERY_WITH_SPEC, _NAMES_WITH_SPEC)
        row = await self._fetch_one(sql, {"sweep_id": sweep_id, "tenant_id": tenant_id})
        if row is None:
            raise NotFoundError(f"no sweep {sweep_id!r} (list yours with GET /v1/sweeps)")
        values = dict(zip(names, row, strict=True))
        values["state"] = SweepState(values["state"])
        if spec is None:
            raw = values["spec"]
            spec = SweepSpec.model_validate(json.loads(raw) if isinstance(raw, str) else raw)
            self._specs[sweep_id] = spec
            if len(self._specs) > _SPECS_KEPT:
                self._specs.popitem(last=False)
        values.pop("spec", None)
        return Sweep(**values), spec

    async def start(self) -> None:
        """Start listening for changes on the running loop, so reads on it can be kept."""
        if self._listener is None:
            self._listen_loop = asyncio.get_running_loop()
            self._listener = asyncio.create_task(self._listen(), name="sharpmix-sweep-changes")

    async def read_rendered(
        self, tenant_id: int, sweep_id: str, render: Callable[[Sweep, SweepSpec], bytes]
    ) -> bytes:
        """``render`` of the tenant's sweep: kept from an earlier read while the sweep is unchanged.

        Raises:
            NotFoundError: when it does not exist or belongs to another tenant (never kept).
            DatabaseError: when it has to be read and the database does not answer in time.
        """
        if not self._live():
            row, spec = await self.read(tenant_id, sweep_id)
            return render(row, spec)
        with self._lock:
            kept = self._bodies.get(sweep_id)
            generation = self._generation
        if kept is not None and kept[0] == tenant_id:
            return kept[1]
        # One read per sweep and change: polls that miss together (right after a change) share
        # the read already in flight since that change rather than each queueing their own. It
        # runs as a task of its own, so a poll that gives up does not cancel it for the others.
        key = (tenant_id, sweep_id)
        flight = self._flights.get(key)
        if flight is None or flight[0] != generation:
            read = self._read_and_keep(tenant_id, sweep_id, render, generation)
            task = asyncio.ensure_future(read)
            flight = self._flights[key] = (generation, task)
            task.add_done_callback(self._landing(key, flight))
        return await asyncio.shield(flight[1])

    async def _read_and_keep(
        self,
        tenant_id: int,
        sweep_id: str,
        render: Callable[[Sweep, SweepSpec], bytes],
        generation: int,
    ) -> bytes:
        row, spec = await self.read(tenant_id, sweep_id)
        body = render(row, spec)
        with self._lock:
            # Not when a change or a reconnect came while this read was in flight.
            if generation == self._generation and self._live():
                self._bodies[sweep_id] = (tenant_id, body)
                if len(self._bodies) > _BODIES_KEPT:
                    self._bodies.popitem(last=False)
        return body

    def _landing(
        self, key: tuple[int, str], flight: tuple[int, asyncio.Future[bytes]]
    ) -> Callable[[asyncio.Future[bytes]], None]:
        def landed(task: asyncio.Future[bytes]) -> None:
            if self._flights.get(key) is flight:
                del self._flights[key]
            # Its error reaches every poll that waited; when all gave up, nobody else reads it.
            if not task.cancelled():
                task.exception()

        return landed

    def forget(self, sweep_id: str) -> None:
        """Drop what is kept of a sweep this process just changed (safe from any thread)."""
        with self._lock:
            self._bodies.pop(sweep_id, None)
            self._generation += 1

    def _forget_all(self) -> None:
        with self._lock:
            self._bodies.clear()
            self._generation += 1

    def _live(self) -> bool:
        return (
            time.monotonic() - self._verified_at < LIVE_SECONDS
            and asyncio.get_running_loop() is self._listen_loop
        )

    def _on_notice(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        self.forget(payload)

    async def _listen(self) -> None:
        """LISTEN on `CHANNEL` and prove the connection every `PING_SECONDS`, reconnecting."""
        limits = self._timeouts
        failures = 0
        while True:
            connection: asyncpg.Connection | None = None
            try:
                async with asyncio.timeout(limits.checkout_limit):
                    connection = await asyncpg.connect(
                        self._conninfo,
                        timeout=limits.connect,
                        server_settings={"application_name": LISTENER_NAME},
                    )
                    await connection.add_listener(CHANNEL, self._on_notice)
                # Notices sent before this LISTEN are lost: start from nothing kept.
                self._forget_all()
                while True:
                    async with asyncio.timeout(limits.connect):
                        await connection.fetchval("SELECT 1")
                    self._verified_at = time.monotonic()
                    if failures:
                        log.info("listening for sweep changes again")
                        failures = 0
                    await asyncio.sleep(PING_SECONDS)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                if failures == 1:
                    log.warning("sweep reads go to the database: change listener lost (%s)", exc)
            finally:
                self._verified_at = -math.inf
                self._forget_all()
                if connection is not None:
                    connection.terminate()
            await asyncio.sleep(_RECONNECT_SECONDS)

    async def close(self) -> None:
        """Stop listening and close the idle connections (at application shutdown)."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        for loop, state in list(self._loops.items()):
            for connection in state.idle:
                if loop is asyncio.get_running_loop():
                    connection.terminate()
                elif not loop.is_closed():
                    loop.call_soon_threadsafe(connection.terminate)
            state.idle.clear()
        self._loops.clear()

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            state = self._loops[loop] = _LoopState(asyncio.Semaphore(self._size), [])
        return state

    async def _fetch_one(self, sql: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
        limits = self._timeouts
        state = self._state()
        try:
            async with asyncio.timeout(limits.pool):
                await state.slots.acquire()
        except TimeoutError as exc:
            raise DatabaseError(
                "could not read the sweep: no database connection free within "
                f"{limits.pool:g} s; retry shortly (SHARPMIX_DATABASE_POOL_TIMEOUT)"
            ) from exc
        connection = state.idle.pop() if state.idle else None
        try:
            async with asyncio.timeout(limits.checkout_limit):
                if connection is None:
                    connection = await asyncpg.connect(
                        self._conninfo,
                        timeout=limits.connect,
                        command_timeout=limits.statement,
                        server_settings={"statement_timeout": str(round(limits.statement * 1000))},
                    )
                # Prepared once per connection, by asyncpg's statement cache.
                record = await connection.fetchrow(sql, params["sweep_id"], params["tenant_id"])
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if connection is not None:
                # Its state is unknown (a statement may still be in flight): never reuse it.
                connection.terminate()
            reason = str(exc) or f"no answer within {limits.checkout_limit:g} s"
            raise DatabaseError(
                f"could not read the sweep: {reason}. Check that the database is running and "
                "reachable at SHARPMIX_DATABASE_URL; retry shortly."
            ) from exc
        else:
            state.idle.append(connection)
        finally:
            state.slots.release()
        return None if record is None else tuple(record.values())
