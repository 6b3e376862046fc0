"""Reusing finished sweeps (issue 11, part 5): add candidates to one, compare two.

Warm starts are part of the submission itself (``warm_start_from`` in the spec, checked in
``routes/sweeps.py``). Every route is scoped to the caller's tenant: another tenant's sweep
answers 404, like one that does not exist.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from contract.reuse import AddCandidates, SweepComparison
from contract.spec import SweepSpec
from contract.wire import Message, SweepOut, ValidationMessage
from service.api.deps import SessionDep, SettingsDep, TenantDep
from service.api.routes.sweeps import IdempotencyKey
from service.api.schemas import sweep_out
from service.db import compare, reuse
from service.db.reads import SweepReader
from service.fingerprint import sweep_fingerprint
from service.preflight import check_limits

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Message, "description": "Missing, unknown or revoked API key."},
    404: {"model": Message, "description": "No such sweep for this tenant."},
    422: {"model": ValidationMessage, "description": "A value at fault, named in 'loc'."},
    503: {"model": Message, "description": "The database cannot be reached."},
}

router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"], responses=_ERRORS)

SweepId = Annotated[str, Query(min_length=1, max_length=64, description="Id of a sweep of yours.")]


@router.get("/compare")
def compare_sweeps(
    a: SweepId, b: SweepId, tenant: TenantDep, session: SessionDep
) -> SweepComparison:
    """Two of your sweeps side by side: per ratio either measured, each sweep's eta_c, its lower
    bound, the one-step loss change and the first-step verdict per evaluation set; both
    recommendations (once succeeded); and every spec field whose value differs."""
    return compare.compare_sweeps(session, tenant.id, a, b)


@router.post(
    "/{sweep_id}/candidates",
    status_code=202,
    responses={
        200: {"model": SweepOut, "description": "Replay of an earlier Idempotency-Key."},
        409: {
            "model": Message,
            "description": "The sweep has not succeeded, has no list of ratios, or its model or "
            "data changed since it was measured (the message names what changed).",
        },
    },
)
def add_candidates(
    sweep_id: str,
    body: AddCandidates,
    tenant: TenantDep,
    session: SessionDep,
    settings: SettingsDep,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> SweepOut:
    """Add candidate ratios to a succeeded sweep of listed ratios (202): it goes back to
    ``running``, a task per new ratio is queued (and a trajectory per ratio when the sweep runs
    them), and its measurements, Optuna trials and trajectories so far are kept. Workers reuse the
    sweep's gradients where they still hold them. Refused (409) when the model or data files
    changed since the sweep was measured. The same Idempotency-Key with the same ratios returns
    the sweep again (200) and adds nothing."""

    def fingerprint(spec: SweepSpec) -> dict[str, str]:
        return sweep_fingerprint(spec, settings)

    def limits(spec: SweepSpec) -> None:
        check_limits(spec, settings)

    sweep, added = reuse.add_candidates(
        session,
        tenant.id,
        sweep_id,
        body,
        idempotency_key,
        fingerprint=fingerprint,
        check=limits,
    )
    if not added:
        response.status_code = 200
    reader: SweepReader | None = request.app.state.sweep_reader
    if reader is not None:
        reader.forget(sweep_id)  # a poll right after this answer sees it running again
    return sweep_out(sweep)


__all__ = ["router"]
