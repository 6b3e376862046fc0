"""Adding candidates in the db layer (issue 11, part 5): the reopen is guarded by the transition
table, and nothing is written when a check refuses."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from contract.reuse import AddCandidates
from contract.spec import SweepSpec
from contract.states import SweepState
from service.db import reuse
from service.db.models import Sweep, SweepTask
from service.db.queue import reopen_sweep_without_commit
from service.db.sweeps import create_sweep
from service.db.tenants import create_tenant
from service.errors import ConflictError, InvalidRequestError

pytestmark = pytest.mark.db

PRINT = {"model": "m1", "data.pt": "d1"}


def make(session: Session, state: SweepState) -> tuple[int, str]:
    tenant = create_tenant(session, f"t-{state.value}").id
    spec = SweepSpec.model_validate(
        {
            "model": {"path": "m"},
            "pretraining": {"name": "pt", "path": "pt"},
            "finetuning": [{"name": "ft", "path": "ft"}],
            "ratios": [0.0, 0.5],
            "learning_rate": 1e-3,
            "seq_len": 8,
            "batch_tokens": 64,
        }
    )
    sweep, _ = create_sweep(session, tenant, spec, None, fingerprint=dict(PRINT))
    sweep.state = state
    session.commit()
    return tenant, sweep.id


@pytest.mark.parametrize("state", list(SweepState))
def test_only_a_succeeded_sweep_is_reopened(session: Session, state: SweepState) -> None:
    _, sweep_id = make(session, state)
    reopened = reopen_sweep_without_commit(session, sweep_id, 1)
    session.commit()
    assert reopened == (state == SweepState.succeeded)
    sweep = session.get_one(Sweep, sweep_id)
    session.refresh(sweep)
    expected = SweepState.running if state == SweepState.succeeded else state
    assert sweep.state == expected and sweep.tasks_total == 2 + reopened
    # The next final state is a new edition, delivered on its own.
    assert sweep.edition == 1 + reopened


def no_limit(spec: SweepSpec) -> None:
    """No operator limit: every grown spec passes."""


def count(session: Session, sweep_id: str) -> int:
    query = select(func.count()).select_from(SweepTask).where(SweepTask.sweep_id == sweep_id)
    return int(session.scalar(query) or 0)


def test_refusals_write_nothing(session: Session) -> None:
    tenant, sweep_id = make(session, SweepState.succeeded)

    def changed(spec: SweepSpec) -> dict[str, str]:
        return {**PRINT, "data.pt": "d2"}

    def unreadable(spec: SweepSpec) -> dict[str, str]:
        raise FileNotFoundError("pt")

    def over_limit(spec: SweepSpec) -> None:
        raise InvalidRequestError("ratios", "too many")

    body = AddCandidates(ratios=[0.25])
    with pytest.raises(ConflictError, match=r"changed since it was measured \(data.pt\)"):
        reuse.add_candidates(
            session, tenant, sweep_id, body, None, fingerprint=changed, check=no_limit
        )
    session.rollback()
    with pytest.raises(ConflictError, match="cannot be read any more"):
        reuse.add_candidates(
            session, tenant, sweep_id, body, None, fingerprint=unreadable, check=no_limit
        )
    session.rollback()
    with pytest.raises(InvalidRequestError, match="too many"):
        reuse.add_candidates(
            session, tenant, sweep_id, body, "k", fingerprint=lambda s: PRINT, check=over_limit
        )
    session.rollback()
    assert count(session, sweep_id) == 2
    sweep = session.get_one(Sweep, sweep_id)
    session.refresh(sweep)
    assert sweep.state == SweepState.succeeded and not sweep.additions

    def fits(spec: SweepSpec) -> None:
        assert spec.ratios == [0.0, 0.5, 0.25]

    swept, added = reuse.add_candidates(
        session, tenant, sweep_id, body, "k", fingerprint=lambda s: dict(PRINT), check=fits
    )
    assert added and swept.state == SweepState.running and count(session, sweep_id) == 3
