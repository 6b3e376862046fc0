"""``/v1/sweeps/{id}/deliveries``: the webhook POSTs and MLflow runs of a finished sweep."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from contract.wire import DeliveryOut, Message
from service.api.deps import SessionDep, TenantDep
from service.api.schemas import delivery_out
from service.db import deliveries

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Message, "description": "Missing, unknown or revoked API key."},
    404: {"model": Message, "description": "No such sweep for this tenant."},
    503: {"model": Message, "description": "The database cannot be reached."},
}

router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"], responses=_ERRORS)


@router.get("/{sweep_id}/deliveries")
def list_deliveries(sweep_id: str, tenant: TenantDep, session: SessionDep) -> list[DeliveryOut]:
    """Every delivery of the sweep's final state and each attempt: empty while the sweep runs
    (and for a few seconds after it ends, until the delivery loop picks it up)."""
    rows = deliveries.list_deliveries(session, tenant.id, sweep_id)
    return [delivery_out(row) for row in rows]
