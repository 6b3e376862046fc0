"""Reusing a finished sweep (issue 11, part 5): add candidates to it, warm-start from it.

Each public function is one short transaction, every lookup scoped to a tenant (another tenant's
sweep is one that does not exist). The sweep's state moves only through the queue's writer
(:func:`service.db.queue.reopen_sweep_without_commit`), guarded by the transition table.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from contract.reuse import AddCandidates
from contract.spec import SweepSpec
from contract.states import SweepState, TaskKind, TaskState
from service.db._errors import transaction
from service.db.models import Sweep, SweepTask, utcnow
from service.db.queue import reopen_sweep_without_commit
from service.db.sweeps import _owned_without_commit
from service.errors import (
    ConflictError,
    IdempotencyMismatchError,
    InvalidRequestError,
    NotFoundError,
)

# What the files are now, per part (see service/fingerprint.py); raises what the route maps.
Fingerprinter = Callable[[SweepSpec], dict[str, str]]


def add_candidates(
    session: Session,
    tenant_id: int,
    sweep_id: str,
    request: AddCandidates,
    idempotency_key: str | None,
    *,
    fingerprint: Fingerprinter,
    check: Callable[[SweepSpec], None],
) -> tuple[Sweep, bool]:
    """Add candidate ratios to the tenant's succeeded sweep and queue their tasks.

    The new ratios are appended to the spec's list, each gets a measurement task (and a
    trajectory task when the sweep runs them), and the sweep goes back to ``running``; its
    existing measurements, trials and trajectories stay as they are. A replay of an earlier
    Idempotency-Key with the same ratios returns the sweep without adding anything.

    Args:
        fingerprint: The parts the measurements rest on, as the files are now; compared with the
            fingerprint stored at submit.
        check: The operator's limits on the grown spec (raises ``InvalidRequestError``).

    Returns:
        The sweep, and True when this call added the ratios (False for a replay).

    Raises:
        NotFoundError: when the sweep does not exist or belongs to another tenant.
        IdempotencyMismatchError: when the key was used before with other ratios (422).
        InvalidRequestError: a ratio is a candidate already, or the grown sweep is above a limit.
        ConflictError: the sweep has not succeeded, has no candidate list, or its model or data
            changed since it was measured (the message names what changed).
    """
    with transaction(session, "add candidates to the sweep"):
        sweep = _owned_without_commit(session, tenant_id, sweep_id, lock=True)
        replay = _replayed(sweep, idempotency_key, request)
        if replay:
            return sweep, False
        if sweep.state != SweepState.succeeded:
            raise ConflictError(
                f"sweep {sweep_id} is {sweep.state.value}; candidates can be added to a "
                "succeeded sweep only (wait for it, or submit a new sweep)"
            )
        spec = SweepSpec.model_validate(sweep.spec)
        if not isinstance(spec.ratios, list):
            kind = next(
                f"'{name}'"
                for name, value in (
                    ("ratios: auto", spec.ratios),
                    ("ratio_range", spec.ratio_range),
                    ("mixes", spec.mixes),
                    ("mix_search", spec.mix_search),
                )
                if value is not None
            )
            raise ConflictError(
                f"sweep {sweep_id} has {kind}, not a list of ratios; candidates can be added to a "
                "sweep of listed ratios (submit a new sweep with warm_start_from instead)"
            )
        already = sorted(set(request.ratios) & set(spec.ratios))
        if already:
            raise InvalidRequestError(
                "ratios",
                f"already candidates of sweep {sweep_id}: {', '.join(f'{r:g}' for r in already)}; "
                "list only new ratios",
            )
        _same_files(sweep, spec, fingerprint)
        grown = spec.model_copy(update={"ratios": [*spec.ratios, *request.ratios]})
        grown = SweepSpec.model_validate(grown.model_dump(mode="json"))
        check(grown)
        added = _queue_tasks_without_commit(session, sweep, grown, request.ratios)
        sweep.spec = grown.model_dump(mode="json")
        sweep.additions = [
            *(sweep.additions or []),
            {
                "idempotency_key": idempotency_key,
                "ratios": list(request.ratios),
                "at": utcnow().isoformat(),
            },
        ]
        session.flush()
        if not reopen_sweep_without_commit(session, sweep_id, added):
            raise ConflictError(f"sweep {sweep_id} changed state meanwhile; try again")
        session.flush()
        session.refresh(sweep)
    return sweep, True


def _replayed(sweep: Sweep, key: str | None, request: AddCandidates) -> bool:
    if key is None:
        return False
    for entry in sweep.additions or []:
        if entry.get("idempotency_key") == key:
            if entry.get("ratios") != list(request.ratios):
                raise IdempotencyMismatchError(
                    f"Idempotency-Key {key!r} added other ratios to sweep {sweep.id} "
                    f"({entry.get('ratios')}); send those again, or use a new key"
                )
            return True
    return False


def _same_files(sweep: Sweep, spec: SweepSpec, fingerprint: Fingerprinter) -> None:
    stored: dict[str, str] | None = sweep.fingerprint
    if stored is None:
        raise ConflictError(
            f"sweep {sweep.id} has no fingerprint of its model and data (it was stored before "
            "fingerprints, or its files could not be read at submit), so reusing its gradients "
            "could be wrong; submit a new sweep with warm_start_from instead"
        )
    try:
        now = fingerprint(spec)
    except OSError as exc:
        raise ConflictError(
            f"the files of sweep {sweep.id} cannot be read any more ({exc}); its measurements "
            "cannot be extended: submit a new sweep"
        ) from exc
    changed = sorted(k for k in stored.keys() | now.keys() if stored.get(k) != now.get(k))
    if changed:
        raise ConflictError(
            f"the model or data of sweep {sweep.id} changed since it was measured "
            f"({', '.join(changed)}): its gradients and measurements no longer hold. Submit a "
            "new sweep (warm_start_from can seed it from this one)"
        )


def _queue_tasks_without_commit(
    session: Session, sweep: Sweep, spec: SweepSpec, ratios: list[float]
) -> int:
    first = (
        session.scalar(select(func.max(SweepTask.slot)).where(SweepTask.sweep_id == sweep.id)) or 0
    ) + 1
    tasks = [
        SweepTask(
            sweep_id=sweep.id,
            slot=first + i,
            ratio=r,
            kind=TaskKind.measure,
            state=TaskState.queued,
        )
        for i, r in enumerate(ratios)
    ]
    if spec.trajectory is not None:
        tasks += [
            SweepTask(
                sweep_id=sweep.id,
                slot=first + len(ratios) + i,
                ratio=r,
                kind=TaskKind.trajectory,
                state=TaskState.queued,
            )
            for i, r in enumerate(ratios)
        ]
    session.add_all(tasks)
    return len(tasks)


def check_warm_start(session: Session, tenant_id: int, spec: SweepSpec) -> None:
    """Refuse a ``warm_start_from`` that is not a sweep of this tenant.

    Raises:
        InvalidRequestError: naming ``warm_start_from`` (422), for an unknown sweep and another
            tenant's alike.
    """
    if spec.warm_start_from is None:
        return
    with transaction(session, "read the warm-start sweep"):
        try:
            _owned_without_commit(session, tenant_id, spec.warm_start_from)
        except NotFoundError as exc:
            raise InvalidRequestError(
                "warm_start_from",
                f"no sweep {spec.warm_start_from!r} of yours to warm-start from (list yours "
                "with GET /v1/sweeps)",
            ) from exc


__all__ = ["Fingerprinter", "add_candidates", "check_warm_start"]
