"""Dependencies routes declare, as ``Annotated`` aliases: a route's signature says what it needs.

The dependencies are ``async``: FastAPI runs a synchronous dependency on the thread pool, one hop
each, so a request with a session and a key check paid three hops before its route started. Here
the session is only created (no connection until the first statement) and the key check is
answered from a short-lived cache, so a polling request's one hop is its route's own.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPBearer
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from service.config import Settings
from service.db import tenants


@dataclass(frozen=True)
class Caller:
    """The tenant a request's API key belongs to.

    Attributes:
        id: The tenant's id; every lookup is scoped by it.
        name: The tenant's name.
    """

    id: int
    name: str


class KeyCache:
    """API keys checked recently, by the SHA-256 of the key (the key itself is not kept).

    A hit skips the database read (and the connection) that checking a key costs; an entry lives
    ``ttl`` seconds, so a revoked key is refused within that time. Refusals are not cached: an
    unknown key always costs a lookup, like a first request.
    """

    def __init__(self, ttl: float, max_entries: int = 4096) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, Caller]] = {}
        self._lock = threading.Lock()

    def get(self, digest: str) -> Caller | None:
        """The cached caller for a key digest, or None when absent or expired."""
        entry = self._entries.get(digest)
        if entry is None or entry[0] <= time.monotonic():
            return None
        return entry[1]

    def put(self, digest: str, caller: Caller) -> None:
        """Remember a key that checked out."""
        if self.ttl <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.max_entries:
                now = time.monotonic()
                self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()
            self._entries[digest] = (time.monotonic() + self.ttl, caller)


async def get_app_settings(request: Request) -> Settings:
    """The settings the application was built with.

    Async although it awaits nothing: FastAPI runs a plain ``def`` dependency on the thread
    pool, one thread hop per request. ``/metrics``, whose path nothing else changed, went from
    0.40x to 0.75x of a trivial app with this (bench/README.md, api_load).
    """
    settings: Settings = request.app.state.settings
    return settings


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A database session for one request, closed (and any open transaction rolled back) after.

    Every db-layer function commits its own transaction, so closing normally touches no
    connection; only a session left inside a transaction (an error mid-way) is closed on the
    thread pool, where its rollback may wait on the database.
    """
    factory: sessionmaker[Session] = request.app.state.session_factory
    session = factory()
    try:
        yield session
    finally:
        if session.in_transaction():
            await run_in_threadpool(session.close)
        else:
            session.close()


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionDep = Annotated[Session, Depends(get_session)]


def _check_key(factory: sessionmaker[Session], key: str) -> Caller:
    with factory() as session:
        tenant = tenants.authenticate(session, key)
        return Caller(id=tenant.id, name=tenant.name)


class BearerKey(HTTPBearer):
    """The tenant whose API key came in ``Authorization: Bearer ...``.

    A security scheme (so OpenAPI documents it) whose call is the whole check: one dependency
    per request rather than a scheme plus a function depending on it, each of which FastAPI
    resolves separately on every request.
    """

    async def __call__(self, request: Request) -> Caller:  # type: ignore[override]
        """Check the request's key (cached), or refuse it.

        Raises:
            HTTPException: 401 when no bearer key was sent (a wrong key raises
                AuthenticationError, which becomes 401 as well).
        """
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise HTTPException(
                status_code=401,
                detail="send your API key as 'Authorization: Bearer smx_...'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        cache: KeyCache = request.app.state.key_cache
        digest = hashlib.sha256(key.encode()).hexdigest()
        caller = cache.get(digest)
        if caller is None:
            caller = await run_in_threadpool(_check_key, request.app.state.session_factory, key)
            cache.put(digest, caller)
        return caller


get_tenant = BearerKey(
    auto_error=False,
    scheme_name="HTTPBearer",
    description="An API key from `sharpmix keys create --tenant NAME` (smx_...).",
)
TenantDep = Annotated[Caller, Depends(get_tenant)]
