"""Probes and metrics: no authentication, so orchestrators and Prometheus can call them."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from service.api.deps import SettingsDep
from service.api.metrics import Metrics
from service.api.schemas import Message, Readiness
from service.db import migrate

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up (liveness); says nothing about the database."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": Message}})
def readyz(settings: SettingsDep) -> Readiness:
    """The database answers and is migrated to the revision this server needs (readiness)."""
    current = migrate.current_revision(settings.resolved_database_url)
    head = migrate.head_revision()
    if current is None or current != head:
        raise HTTPException(
            status_code=503,
            detail=f"database at revision {current}, this server needs {head}: "
            "run `sharpmix db upgrade`",
        )
    return Readiness(status="ready", revision=current)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def metrics(request: Request) -> Response:
    """Prometheus metrics in the text exposition format."""
    registry: Metrics = request.app.state.metrics
    return Response(registry.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")
