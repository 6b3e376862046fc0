"""The polling read, ``GET /v1/sweeps/{id}``, on the event loop instead of the thread pool.

Clients poll a sweep every few seconds for as long as it runs, so this one read is most of the
API's traffic. Through the synchronous stack it costs a thread-pool hop (which halves the
throughput of an otherwise idle route on a small machine), an ORM session and, on PostgreSQL,
three round trips (BEGIN, SELECT, COMMIT). Here it is one prepared statement on a small asyncpg
pool (asyncpg: the asynchronous driver with the least work per query in Python; psycopg stays
the driver of everything else), under the limits of every engine (`service.db.engine.Timeouts`):
a hung database costs a bounded wait and a `DatabaseError`, never a parked request.

A sweep's spec never changes after it is stored, so it is parsed once per sweep and kept (a
bounded cache); the columns that change are read on every request.

SQLite (the embedded default, one host) keeps the synchronous path: `SweepReader.for_url`
returns None there.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from contract.spec import SweepSpec
from contract.states import SweepState
from service.db.engine import Timeouts
from service.db.models import Sweep
from service.errors import DatabaseError, NotFoundError

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

    async def close(self) -> None:
        """Close the idle connections (at application shutdown)."""
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
