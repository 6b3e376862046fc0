"""Reuse on a real (tiny) model and the real database (issue 11, part 5): candidates added to a
finished sweep are measured without recomputing its gradients, and a warm start seeds the new
sweep's study from the old one's measured ratios."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from sqlalchemy import select

from contract.reuse import AddCandidates
from contract.spec import SweepSpec
from contract.states import SweepState
from service.config import Settings
from service.db import reuse
from service.db.engine import make_engine, make_session_factory
from service.db.models import Measurement, Sweep
from service.db.sweeps import create_sweep
from service.db.tenants import create_tenant
from service.fingerprint import sweep_fingerprint
from tests.conftest import SweepAssets
from workers.reuse import SEEDED_FROM
from workers.worker import Worker

pytestmark = pytest.mark.db


def settings_for(
    db_url: str, assets: SweepAssets, tmp_path: Path, store_bytes: int = 0
) -> Settings:
    return Settings(
        home=tmp_path / "home",
        database_url=db_url,
        allowed_roots=[assets.root],
        device="cpu",
        lease_seconds=30,
        heartbeat_seconds=0.2,
        gradient_store_bytes=store_bytes,
    )


class Store:
    """The sweep database as the API uses it: one tenant, submissions and additions."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = make_engine(settings.resolved_database_url)
        self.sessions = make_session_factory(self.engine)
        with self.sessions() as session:
            self.tenant = create_tenant(session, "team").id

    def submit(self, body: dict[str, object]) -> str:
        spec = SweepSpec.model_validate(body)
        with self.sessions() as session:
            sweep, _ = create_sweep(
                session,
                self.tenant,
                spec,
                None,
                fingerprint=sweep_fingerprint(spec, self.settings),
            )
            return sweep.id

    def add(self, sweep_id: str, ratios: list[float], key: str) -> bool:
        with self.sessions() as session:
            _, added = reuse.add_candidates(
                session,
                self.tenant,
                sweep_id,
                AddCandidates(ratios=ratios),
                key,
                fingerprint=lambda spec: sweep_fingerprint(spec, self.settings),
                check=lambda spec: None,
            )
            return added

    def sweep(self, sweep_id: str) -> Sweep:
        with self.sessions() as session:
            return session.get_one(Sweep, sweep_id)

    def ratios(self, sweep_id: str) -> list[float]:
        with self.sessions() as session:
            rows = session.scalars(select(Measurement).where(Measurement.sweep_id == sweep_id))
            return sorted({m.ratio for m in rows})


def test_added_candidates_reuse_the_gradients_the_worker_holds(
    db_url: str, sweep_assets: SweepAssets, tmp_path: Path
) -> None:
    settings = settings_for(db_url, sweep_assets, tmp_path)
    store = Store(settings)
    sweep_id = store.submit(sweep_assets.spec(ratios=[0.0, 1.0]))
    worker = Worker(settings, worker_id="w1")
    try:
        assert worker.run(exit_when_idle=True) == 2
        first = store.sweep(sweep_id)
        assert first.state == SweepState.succeeded, first.error
        # K = 2 domains x B = 2 batches.
        assert first.backwards == 4

        assert store.add(sweep_id, [0.5], key="more")
        assert not store.add(sweep_id, [0.5], key="more")  # a retry adds nothing
        assert store.sweep(sweep_id).state == SweepState.running
        assert worker.run(exit_when_idle=True) == 1
    finally:
        worker.close()

    done = store.sweep(sweep_id)
    assert done.state == SweepState.succeeded, done.error
    # The new ratio cost searches only: not one backward pass more, and no forward of L(theta).
    assert done.backwards == first.backwards
    assert done.tasks_done == done.tasks_total == 3
    assert store.ratios(sweep_id) == [0.0, 0.5, 1.0]
    assert done.recommendation is not None
    assert [r["ratio"] for r in done.recommendation["ranking"]] == [0.0, 0.5, 1.0]
    study = optuna.load_study(study_name=f"sharpmix-{sweep_id}", storage=db_url)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.params["ratio"] for t in complete) == [0.0, 0.5, 1.0]

    # A worker that does not hold them (a restart, another process) computes them again.
    assert store.add(sweep_id, [0.25], key="again")
    fresh = Worker(settings, worker_id="w2")
    try:
        assert fresh.run(exit_when_idle=True) == 1
    finally:
        fresh.close()
    assert store.sweep(sweep_id).backwards == 2 * first.backwards
    store.engine.dispose()


def test_with_a_gradient_store_another_worker_reads_them_back(
    db_url: str, sweep_assets: SweepAssets, tmp_path: Path
) -> None:
    settings = settings_for(db_url, sweep_assets, tmp_path, store_bytes=1 << 30)
    store = Store(settings)
    sweep_id = store.submit(sweep_assets.spec(ratios=[0.0, 1.0]))
    first = Worker(settings, worker_id="w1")
    try:
        assert first.run(exit_when_idle=True) == 2
    finally:
        first.close()
    before = store.sweep(sweep_id)
    assert before.state == SweepState.succeeded and before.backwards == 4
    assert len(list((settings.cache_dir / "gradients").iterdir())) == 1

    assert store.add(sweep_id, [0.5], key="more")
    second = Worker(settings, worker_id="w2")  # a new process: nothing in memory
    try:
        assert second.run(exit_when_idle=True) == 1
    finally:
        second.close()
    after = store.sweep(sweep_id)
    assert after.state == SweepState.succeeded, after.error
    assert after.backwards == before.backwards  # read back, not recomputed
    with store.sessions() as session:
        rows = session.scalars(
            select(Measurement).where(Measurement.sweep_id == sweep_id, Measurement.ratio == 0.5)
        )
        assert all(m.eta_c is not None and m.eta_c > 0 for m in rows)

    # The same ratio measured by a sweep that computed its own gradients agrees bit for bit.
    plain = Settings(**{**settings.model_dump(), "gradient_store_bytes": 0})
    check = store.submit(sweep_assets.spec(ratios=[0.5], seed=0))
    third = Worker(plain, worker_id="w3")
    try:
        assert third.run(exit_when_idle=True) == 1
    finally:
        third.close()
    with store.sessions() as session:

        def etas(sweep: str) -> list[tuple[str, float | None]]:
            query = select(Measurement).where(
                Measurement.sweep_id == sweep, Measurement.ratio == 0.5
            )
            return sorted((m.eval_set, m.eta_c) for m in session.scalars(query))

        assert etas(check) == etas(sweep_id)
    assert store.sweep(check).backwards == 4
    store.engine.dispose()


def test_a_warm_start_seeds_the_study_from_the_earlier_sweep(
    db_url: str, sweep_assets: SweepAssets, tmp_path: Path
) -> None:
    settings = settings_for(db_url, sweep_assets, tmp_path)
    store = Store(settings)
    old = store.submit(sweep_assets.spec(ratios=[0.0, 0.5, 1.0], batches=1))
    body = sweep_assets.spec(
        ratios=None,
        ratio_range={"low": 0.2, "high": 1.0, "trials": 2},
        batches=1,
        warm_start_from=old,
    )
    new = store.submit(body)
    worker = Worker(settings, worker_id="w1")
    try:
        assert worker.run(exit_when_idle=True) == 5
    finally:
        worker.close()
    assert store.sweep(new).state == SweepState.succeeded, store.sweep(new).error

    study = optuna.load_study(study_name=f"sharpmix-{new}", storage=db_url)
    assert study.user_attrs[SEEDED_FROM] == old
    seeded = [t for t in study.trials if SEEDED_FROM in t.user_attrs]
    # Only the old ratios inside the new range [0.2, 1.0], once each, finished with values.
    assert sorted(t.params["ratio"] for t in seeded) == [0.5, 1.0]
    assert all(t.state == optuna.trial.TrialState.COMPLETE and t.values for t in seeded)
    own = [t for t in study.trials if SEEDED_FROM not in t.user_attrs]
    assert len(own) == 2 and all(0.2 <= t.params["ratio"] <= 1.0 for t in own)
    # The old sweep's measurements are not the new sweep's: it measured its own two ratios.
    assert len(store.ratios(new)) == 2
    store.engine.dispose()
