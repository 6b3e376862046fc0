"""Chaos on real processes: `sharpmix serve` and three `sharpmix worker` processes on PostgreSQL,
workers SIGKILLed at random moments and one SIGSTOPped past its lease and resumed, while sweeps
run. Afterwards: no sweep lost or failed, no task or Optuna trial left RUNNING, no row twice."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from sqlalchemy import select

from contract.states import SweepState, TaskState
from service.db.engine import make_engine, make_session_factory
from service.db.models import Measurement, Sweep, SweepTask
from tests.conftest import POSTGRES_ENV, SweepAssets, _reset_postgres
from tests.e2e.test_processes import Cluster

pytestmark = [
    pytest.mark.db,
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get(POSTGRES_ENV), reason=f"{POSTGRES_ENV} is not set"),
]

LEASE = 4.0  # Cluster's SHARPMIX_LEASE_SECONDS
BUDGET = 170.0  # seconds for the whole run, chaos included


@pytest.fixture
def pg_cluster(
    postgres_server_url: str, sweep_assets: SweepAssets, tmp_path: Path
) -> Iterator[Cluster]:
    _reset_postgres(postgres_server_url)
    cluster = Cluster(postgres_server_url, sweep_assets, tmp_path)
    yield cluster
    cluster.close()


def held_tasks(db_url: str) -> dict[str, int]:
    """Running tasks with a recorded trial, by worker name."""
    engine = make_engine(db_url)
    try:
        with make_session_factory(engine)() as session:
            rows = session.execute(
                select(SweepTask.worker_id, SweepTask.id).where(
                    SweepTask.state == TaskState.running,
                    SweepTask.optuna_trial_number.is_not(None),
                )
            ).all()
        return {worker: task for worker, task in rows if worker is not None}
    finally:
        engine.dispose()


def test_sweeps_survive_kills_and_a_stall_without_loss_or_double_count(
    pg_cluster: Cluster, sweep_assets: SweepAssets
) -> None:
    cluster = pg_cluster
    rng = random.Random(15)
    # Enough work that the kills land while sweeps still run, on a loaded machine or an idle one.
    ratios = [0.0, 0.25, 0.5, 0.75, 1.0]
    ids = [
        cluster.client.submit(sweep_assets.spec(ratios=ratios, seed=seed, batches=3)).id
        for seed in range(6)
    ]
    workers: dict[str, subprocess.Popen[bytes]] = {}
    serial = 0

    def start_worker() -> None:
        nonlocal serial
        name = f"w{serial}"
        serial += 1
        workers[name] = cluster.worker(name)

    for _ in range(3):
        start_worker()

    deadline = time.monotonic() + BUDGET
    kills = 0
    stalled = False
    events: list[str] = []

    def all_final() -> bool:
        return all(cluster.client.get(i).state in ("succeeded", "failed", "cancelled") for i in ids)

    while time.monotonic() < deadline:
        if all_final():
            if stalled and kills >= 2:
                break
            # The work ran out before the chaos did (a fast machine): keep the workers busy.
            spec = sweep_assets.spec(ratios=ratios, seed=len(ids), batches=3)
            ids.append(cluster.client.submit(spec).id)
        time.sleep(rng.uniform(1.0, 2.5))
        held = {w: t for w, t in held_tasks(cluster.db_url).items() if w in workers}
        if not held:
            continue
        victim = rng.choice(sorted(held))
        if not stalled:
            # Stopped past its lease: another worker takes the task over meanwhile.
            workers[victim].send_signal(signal.SIGSTOP)
            time.sleep(LEASE + 3)
            workers[victim].send_signal(signal.SIGCONT)
            stalled = True
            events.append(f"stop {victim}")
        elif kills < 5:
            workers[victim].send_signal(signal.SIGKILL)
            workers[victim].wait()
            del workers[victim]
            kills += 1
            events.append(f"kill {victim}")
            start_worker()
    while time.monotonic() < deadline and not all_final():
        time.sleep(1)

    assert stalled and kills >= 2, (events, cluster.logs())
    assert all(proc.poll() is None for proc in workers.values()), cluster.logs()
    engine = make_engine(cluster.db_url)
    with make_session_factory(engine)() as session:
        sweeps = {s.id: s for s in session.scalars(select(Sweep).where(Sweep.id.in_(ids)))}
        tasks = list(session.scalars(select(SweepTask).where(SweepTask.sweep_id.in_(ids))))
        rows = list(session.scalars(select(Measurement).where(Measurement.sweep_id.in_(ids))))
    engine.dispose()
    assert len(sweeps) == len(ids)  # none lost
    assert {s.state for s in sweeps.values()} == {SweepState.succeeded}, (
        [(s.id, s.state, s.error) for s in sweeps.values()],
        events,
        cluster.logs(),
    )
    assert {t.state for t in tasks} == {TaskState.done}
    assert all(s.tasks_done == s.tasks_total == len(ratios) for s in sweeps.values())
    # Each (sweep, ratio, set) measured and counted once, by the task's final owner.
    keys = Counter((m.sweep_id, m.ratio, m.eval_set) for m in rows)
    assert set(keys.values()) == {1} and len(keys) == len(ids) * len(ratios) * 2
    owners = {t.id: t.worker_id for t in tasks}
    assert {m.task_id for m in rows} == set(owners)
    for sweep_id in ids:
        study = optuna.load_study(study_name=f"sharpmix-{sweep_id}", storage=cluster.db_url)
        trials = study.get_trials(deepcopy=False)
        assert not [t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING]
        told = sorted(t.params["ratio"] for t in trials if t.state.name in ("COMPLETE", "PRUNED"))
        assert told == ratios, (sweep_id, [(t.number, t.state, t.params) for t in trials])
