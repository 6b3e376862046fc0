"""``/v1/sweeps``: submit a mix sweep, follow it, read its evidence and its recommendation.

Every route is scoped to the caller's tenant: another tenant's sweep answers 404, like one that
does not exist.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from contract.recommendation import Recommendation
from contract.spec import SweepSpec
from contract.states import SweepState
from contract.wire import (
    Message,
    SweepOut,
    SweepPage,
    TrajectoriesOut,
    TrialOut,
    ValidationMessage,
)
from service import plot
from service.api.deps import SessionDep, SettingsDep, TenantDep, get_tenant
from service.api.schemas import sweep_out, trajectories_out, trial_out
from service.db import reuse, sweeps
from service.db.models import Sweep
from service.db.reads import SweepReader
from service.export import ExportError, Format, render_export
from service.fingerprint import fingerprint_or_none
from service.mix_plot import render_mix_plot
from service.notify import check_notify_url
from service.preflight import check_files, check_limits, check_paths
from service.trajectory_plot import render_trajectory_plot

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Message, "description": "A malformed HTTP request (headers, body framing)."},
    401: {"model": Message, "description": "Missing, unknown or revoked API key."},
    404: {"model": Message, "description": "No such sweep for this tenant."},
    422: {"model": ValidationMessage, "description": "A value at fault, named in 'loc'."},
    503: {"model": Message, "description": "The database cannot be reached."},
}

router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"], responses=_ERRORS)

IdempotencyKey = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=255,
        description="Makes retries safe: the same key with the same body returns the same sweep "
        "(200); the same key with another body is refused (422).",
    ),
]


@router.post(
    "",
    status_code=201,
    responses={
        200: {"model": SweepOut, "description": "Replay of an earlier Idempotency-Key."},
        413: {"model": Message, "description": "Body above SHARPMIX_MAX_BODY_BYTES."},
    },
)
def submit_sweep(
    spec: SweepSpec,
    tenant: TenantDep,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> SweepOut:
    """Queue a mix sweep; workers pick it up. Returns the sweep with its ``id`` (201)."""
    check_limits(spec, settings)
    check_paths(spec, settings)
    check_files(spec, settings)
    check_notify_url(spec, tenant.name, settings)
    reuse.check_warm_start(session, tenant.id, spec)
    sweep, created = sweeps.create_sweep(
        session, tenant.id, spec, idempotency_key, fingerprint=fingerprint_or_none(spec, settings)
    )
    if not created:
        response.status_code = 200
    return sweep_out(sweep)


@router.get("")
def list_sweeps(
    tenant: TenantDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 20,
    cursor: Annotated[
        str | None, Query(max_length=200, description="'next_cursor' of the previous page.")
    ] = None,
) -> SweepPage:
    """Your sweeps, newest first, one page at a time."""
    # An empty cursor is the first page, as no cursor is: the schema allows both.
    rows, next_cursor = sweeps.list_sweeps(session, tenant.id, limit, cursor or None)
    return SweepPage(items=[sweep_out(row) for row in rows], next_cursor=next_cursor)


@router.get(
    "/{sweep_id}",
    response_model=SweepOut,
    # Declared here rather than as parameters: FastAPI resolves each declared parameter and
    # dependency on every request, which on this route (the one clients poll) cost as much as
    # the database read. The route reads both itself; the schema says the same as before.
    openapi_extra={
        "parameters": [
            {"name": "sweep_id", "in": "path", "required": True, "schema": {"type": "string"}}
        ],
        "security": [{"HTTPBearer": []}],
    },
)
async def get_sweep(request: Request) -> Response:
    """A sweep's state, progress (tasks, forward passes, ETA) and error, if any."""
    tenant = await get_tenant(request)
    sweep_id: str = request.path_params["sweep_id"]
    # On PostgreSQL one statement on the event loop (service/db/reads), elsewhere one hop to
    # the thread pool; the model is written straight to JSON (FastAPI would re-validate it and
    # encode a dict first).
    reader: SweepReader | None = request.app.state.sweep_reader
    if reader is not None:
        body = await reader.read_rendered(tenant.id, sweep_id, _render_sweep)
    else:
        row = await run_in_threadpool(
            sweeps.peek_sweep, request.app.state.read_engine, tenant.id, sweep_id
        )
        body = _render_sweep(row, None)
    return Response(body, media_type="application/json")


def _render_sweep(row: Sweep, spec: SweepSpec | None) -> bytes:
    return sweep_out(row, spec).model_dump_json().encode()


@router.get("/{sweep_id}/trials")
def list_trials(sweep_id: str, tenant: TenantDep, session: SessionDep) -> list[TrialOut]:
    """One row per measured ratio and evaluation set, so far."""
    rows = sweeps.list_measurements(session, tenant.id, sweep_id)
    return [trial_out(row) for row in rows]


@router.get("/{sweep_id}/trajectories")
def list_trajectories(sweep_id: str, tenant: TenantDep, session: SessionDep) -> TrajectoriesOut:
    """Per ratio and evaluation set: step, held-out loss and its drift, eta_c along the
    optimizer's current update and the one-step loss change, so far; forecasts once done."""
    sweep, tasks, points = sweeps.list_trajectories(session, tenant.id, sweep_id)
    return trajectories_out(sweep, tasks, points)


@router.get(
    "/{sweep_id}/trajectories.png",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
        409: {"model": Message, "description": "No trajectory point yet."},
    },
)
def get_trajectory_plot(sweep_id: str, tenant: TenantDep, session: SessionDep) -> Response:
    """The pre-training drift and lambda_c against step per ratio, the tolerance band, the
    2/lr line and the forecasts; drawn from what exists, so a running sweep has one too."""
    sweep, tasks, points = sweeps.list_trajectories(session, tenant.id, sweep_id)
    if not points:
        raise HTTPException(
            status_code=409,
            detail=f"sweep {sweep_id} is {sweep.state.value} and has no trajectory point yet"
            + ("" if sweep.spec.get("trajectory") else "; its spec asks for no trajectory"),
        )
    data = trajectories_out(sweep, tasks, points)
    png = render_trajectory_plot(SweepSpec.model_validate(sweep.spec), data)
    return Response(png, media_type="image/png")


@router.get(
    "/{sweep_id}/recommendation",
    responses={409: {"model": Message, "description": "The sweep has not succeeded (yet)."}},
)
def get_recommendation(sweep_id: str, tenant: TenantDep, session: SessionDep) -> Recommendation:
    """The recommended pre-training ratio of a succeeded sweep, with its evidence."""
    return sweeps.get_recommendation(session, tenant.id, sweep_id)


@router.get(
    "/{sweep_id}/plot.png",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
        409: {"model": Message, "description": "Nothing measured yet."},
    },
)
def get_plot(sweep_id: str, tenant: TenantDep, session: SessionDep) -> Response:
    """Critical sharpness against ratio per evaluation set, the 2/learning_rate line and the
    recommended ratio; for k-domain mixes a table of the mixes and their parallel coordinates
    instead. Drawn from what exists, so a running sweep has one too."""
    sweep = sweeps.get_sweep(session, tenant.id, sweep_id)
    measurements = sweeps.list_measurements(session, tenant.id, sweep_id)
    if not measurements:
        raise HTTPException(
            status_code=409,
            detail=f"sweep {sweep_id} is {sweep.state.value} and has no measurement yet; "
            "the plot appears with the first finished ratio",
        )
    recommendation = None
    if sweep.state == SweepState.succeeded and sweep.recommendation is not None:
        recommendation = Recommendation.model_validate(sweep.recommendation)
    spec = SweepSpec.model_validate(sweep.spec)
    if spec.mixes is not None or spec.mix_search is not None:  # k-domain: no line over a ratio
        png = render_mix_plot(spec, measurements, recommendation)
    else:
        png = plot.render_sweep_plot(spec, measurements, recommendation)
    return Response(png, media_type="image/png")


@router.get(
    "/{sweep_id}/export",
    response_class=Response,
    responses={
        200: {
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "application/yaml": {"schema": {"type": "object"}},
                "text/plain": {"schema": {"type": "string"}},
            },
            "description": "The mix in the chosen stack's configuration language; the file "
            "says whether its weights are token or example shares.",
        },
        409: {
            "model": Message,
            "description": "No ratio to export (the sweep has not succeeded or recommends "
            "none; pass ratio), or no token counts for an example-share format.",
        },
    },
)
def export_mix(
    sweep_id: str,
    tenant: TenantDep,
    session: SessionDep,
    format: Annotated[
        Format,
        Query(
            description="json (token and example shares), hf (datasets.interleave_datasets), "
            "llamafactory, axolotl, torchtune (InterleavedDataset), olmo-core "
            "(SourceMixtureConfig), megatron (--data-path blend)."
        ),
    ] = "json",
    ratio: Annotated[
        float | None,
        Query(
            ge=0.0,
            le=1.0,
            description="Export this pre-training ratio instead of the recommended one.",
        ),
    ] = None,
) -> Response:
    """The recommended mix (or ``ratio``) as a configuration for a training stack.

    Our ratio is a token share; stacks that sample examples get example shares converted with
    the measured mean tokens per example of each data set."""
    sweep = sweeps.get_sweep(session, tenant.id, sweep_id)
    basis: str | None = None
    weights: dict[str, float] | None = None
    if ratio is None:
        recommendation = sweeps.get_recommendation(session, tenant.id, sweep_id)
        if recommendation.ratio is None:
            raise HTTPException(
                status_code=409,
                detail=f"sweep {sweep_id} recommends no ratio ({recommendation.reason}); pass "
                "ratio= to export one of its candidates anyway",
            )
        ratio, basis = recommendation.ratio, recommendation.basis
        weights = recommendation.weights
    try:
        exported = render_export(
            format,
            SweepSpec.model_validate(sweep.spec),
            sweep_id=sweep_id,
            ratio=ratio,
            basis=basis,
            sources=sweep.sources,
            weights=weights,
        )
    except ExportError as error:
        raise HTTPException(status_code=409, detail=str(error)) from error
    return Response(
        exported.content,
        media_type=exported.media_type,
        headers={"Content-Disposition": f'inline; filename="{exported.filename}"'},
    )


@router.post(
    "/{sweep_id}/cancel",
    responses={409: {"model": Message, "description": "The sweep has already finished."}},
)
def cancel_sweep(
    sweep_id: str, tenant: TenantDep, session: SessionDep, request: Request
) -> SweepOut:
    """Stop a sweep: a queued one at once; a running one at its worker's next heartbeat."""
    sweep = sweeps.request_cancel(session, tenant.id, sweep_id)
    reader: SweepReader | None = request.app.state.sweep_reader
    if reader is not None:
        reader.forget(sweep_id)  # a poll right after this answer sees the cancel
    return sweep_out(sweep)
