"""Probes and metrics: no API key, so orchestrators and Prometheus can call them.

None of them waits behind the request thread pool: liveness runs on the event loop and never
touches the database; readiness and the store counts of ``/metrics`` read it on threads of their
own, with a deadline.
"""

from __future__ import annotations

import hmac

import anyio
from anyio import to_thread
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from contract.wire import Message, Readiness
from service.api.deps import SettingsDep
from service.api.metrics import Metrics
from service.db import health
from service.errors import DatabaseError

router = APIRouter(tags=["operations"])

# Readiness checks share two threads, so a hung database cannot pile up probe threads.
_READINESS_THREADS = anyio.CapacityLimiter(2)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (liveness); says nothing about the database."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": Message}})
async def readyz(request: Request, settings: SettingsDep) -> Readiness:
    """The database answers, is migrated to the revision this server needs, and takes writes."""
    deadline = settings.database_connect_timeout + settings.database_statement_timeout
    outcome: tuple[str | None, str | None] | None = None
    with anyio.move_on_after(deadline):
        outcome = await to_thread.run_sync(
            health.readiness_problem,
            request.app.state.engine,
            limiter=_READINESS_THREADS,
            abandon_on_cancel=True,
        )
    if outcome is None:
        raise DatabaseError(
            f"the database did not answer within {deadline:g} s: it is overloaded or hung"
        )
    revision, problem = outcome
    if problem is not None or revision is None:
        raise HTTPException(status_code=503, detail=problem, headers={"Retry-After": "5"})
    return Readiness(status="ready", revision=revision)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        401: {"model": Message, "description": "SHARPMIX_METRICS_TOKEN is set; send it."},
    },
)
async def metrics(request: Request, settings: SettingsDep) -> Response:
    """Prometheus metrics in the text exposition format.

    With ``SHARPMIX_METRICS_TOKEN`` set, send it as ``Authorization: Bearer <token>``.
    """
    token = settings.metrics_token
    if token is not None:
        sent = request.headers.get("authorization", "")
        expected = f"Bearer {token.get_secret_value()}"
        if not hmac.compare_digest(sent.encode(), expected.encode()):
            raise HTTPException(
                status_code=401,
                detail="send the metrics token as 'Authorization: Bearer <token>' "
                "(SHARPMIX_METRICS_TOKEN on the server)",
                headers={"WWW-Authenticate": "Bearer"},
            )
    registry: Metrics = request.app.state.metrics
    await registry.refresh()
    return Response(registry.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")
