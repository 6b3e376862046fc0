"""The loss change at each rate of a grid, on the tiny model (issue 11, part 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sqlalchemy import select

from contract.mix import Candidate
from contract.recommendation import Recommendation
from contract.spec import SweepSpec
from contract.states import SweepState
from service.api.schemas import trial_out
from service.config import Settings
from service.db.engine import make_engine, make_session_factory
from service.db.models import Measurement, Sweep
from service.db.sweeps import create_sweep
from service.db.tenants import create_tenant
from tests.conftest import SweepAssets
from workers.data import LoadPolicy
from workers.sweep import prepare
from workers.worker import Worker


def test_each_further_rate_costs_one_forward_and_matches_its_own_measurement(
    sweep_assets: SweepAssets, tmp_path: Path
) -> None:
    body = sweep_assets.spec(ratios=[0.5], batches=2)
    planned = body["learning_rate"]
    assert isinstance(planned, float)
    grid = [planned / 10, planned * 10]
    plain = SweepSpec.model_validate(body)
    gridded = SweepSpec.model_validate({**body, "learning_rates": grid})
    policy = LoadPolicy(allowed_roots=(sweep_assets.root,), cache_dir=tmp_path / "cache")
    prepared = prepare(plain, policy, device="cpu", dtype=torch.float32)
    without = prepared.measure_ratio(Candidate(0.5))
    prepared.spec, prepared.warm, prepared.warm_batch = gridded, {}, {}  # same gradients, a grid
    with_grid = prepared.measure_ratio(Candidate(0.5))

    sets = len(plain.eval_sets())
    # eta_c is not searched again per rate: one extra forward per rate, set and batch.
    assert with_grid.forwards - without.forwards == len(grid) * sets * plain.batches
    for a, b in zip(without.measurements, with_grid.measurements, strict=True):
        assert a.rate_loss_changes is None
        assert a.eta_c == b.eta_c and a.loss_change == b.loss_change
        assert b.rate_loss_changes is not None
        rates = [lr for lr, _ in b.rate_loss_changes]
        assert rates == sorted([*grid, planned])
        at_planned = dict(b.rate_loss_changes)[planned]
        assert at_planned == pytest.approx(b.loss_change)
    # The grid's own loss change at the planned rate, measured as a plain sweep at that rate.
    high = SweepSpec.model_validate({**body, "learning_rate": grid[1]})
    prepared.spec, prepared.warm, prepared.warm_batch = high, {}, {}
    at_high = prepared.measure_ratio(Candidate(0.5))
    for a, b in zip(at_high.measurements, with_grid.measurements, strict=True):
        assert b.rate_loss_changes is not None
        assert dict(b.rate_loss_changes)[grid[1]] == pytest.approx(a.loss_change, rel=1e-6)


@pytest.mark.db
def test_a_sweep_with_a_grid_answers_the_stable_region(
    db_url: str, sweep_assets: SweepAssets, tmp_path: Path
) -> None:
    settings = Settings(
        home=tmp_path / "home",
        database_url=db_url,
        allowed_roots=[sweep_assets.root],
        device="cpu",
        lease_seconds=30,
        heartbeat_seconds=0.2,
    )
    body = sweep_assets.spec(ratios=[0.0, 1.0], batches=1, learning_rates=[1e-5, 1e-1])
    engine = make_engine(db_url)
    sessions = make_session_factory(engine)
    with sessions() as session:
        tenant = create_tenant(session, "team")
        sweep, _ = create_sweep(session, tenant.id, SweepSpec.model_validate(body), None)
        sweep_id = sweep.id
    worker = Worker(settings, worker_id="w1")
    try:
        assert worker.run(exit_when_idle=True) == 2
    finally:
        worker.close()
    with sessions() as session:
        done = session.get_one(Sweep, sweep_id)
        assert done.state == SweepState.succeeded, done.error
        rows = list(session.scalars(select(Measurement).where(Measurement.sweep_id == sweep_id)))
        trials = [trial_out(row) for row in rows]
    engine.dispose()
    grid = [1e-5, 1e-3, 1e-1]
    for trial in trials:
        assert trial.rate_loss_changes is not None
        assert [c.learning_rate for c in trial.rate_loss_changes] == grid
        at_planned = trial.rate_loss_changes[1].loss_change
        assert at_planned == pytest.approx(trial.loss_change)
    assert done.recommendation is not None
    rec = Recommendation.model_validate(done.recommendation)
    region = rec.rate_region
    assert region is not None and region.learning_rates == grid
    assert len(region.points) == 2 * 3 and region.best_ratio_at_planned == rec.ratio
    for entry in region.max_rates:
        # The largest stable grid rate is the largest one below the ratio's first-step bound.
        below = [lr for lr in grid if entry.eta_c_bound is not None and lr < entry.eta_c_bound]
        assert entry.max_stable_lr == max(below, default=None)
    # At the planned rate the region agrees with the first-step ranking.
    planned = {p.ratio: p.stable for p in region.points if p.learning_rate == 1e-3}
    assert planned == {r.ratio: r.in_basin for r in rec.ranking}
