"""`sharpmix worker` over two devices (sharpmix/ranks.py, workers/group.py): two gloo ranks on
the CPU run a sweep through the real queue and record what one process records; a rank killed
mid-task spends the group, the task is retried by a fresh group and completed once."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from contract.states import SweepState, TaskKind, TaskState
from service.config import Settings
from service.db.engine import make_engine, make_session_factory
from service.db.migrate import upgrade
from service.db.models import Measurement, Sweep, SweepTask, TrajectoryPoint
from sharpmix.ranks import run_ranks
from tests.conftest import SweepAssets
from tests.workers.test_worker import submit
from workers.worker import Worker

pytestmark = [pytest.mark.db, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
# Micro-batches of half a batch (16 sequences of 32 tokens): each of two ranks then runs exactly
# one of the micro-batches one process runs, and the sharded loss sums them alike.
HALF_BATCH_TOKENS = 8 * 32


def settings_for(db_url: str, assets: SweepAssets, home: Path, devices: int) -> Settings:
    return Settings(
        home=home,
        database_url=db_url,
        allowed_roots=[assets.root],
        device="cpu",
        devices=devices,
        micro_batch_tokens=HALF_BATCH_TOKENS,
        lease_seconds=30,
        heartbeat_seconds=0.5,
        dist_timeout_seconds=60,
    )


def recorded(db_url: str, sweep_id: str) -> dict[str, Any]:
    """What a sweep left in the database, keyed so two sweeps of one spec compare."""
    engine = make_engine(db_url)
    try:
        with make_session_factory(engine)() as session:
            sweep = session.get_one(Sweep, sweep_id)
            tasks = session.scalars(select(SweepTask).where(SweepTask.sweep_id == sweep_id))
            rows = session.scalars(select(Measurement).where(Measurement.sweep_id == sweep_id))
            points = session.scalars(
                select(TrajectoryPoint).where(TrajectoryPoint.sweep_id == sweep_id)
            )
            return {
                "state": sweep.state,
                "error": sweep.error,
                "recommendation": sweep.recommendation,
                "counts": (sweep.forwards, sweep.backwards),
                "tasks": sorted((t.kind, t.ratio, t.state, t.steps_done) for t in tasks),
                "rows": {(m.ratio, m.eval_set): m for m in rows},
                "points": {(p.ratio, p.step, p.eval_set): p for p in points},
            }
    finally:
        engine.dispose()


def close(a: float | None, b: float | None, what: object) -> None:
    if a is None or b is None or not math.isfinite(b) or b == 0:
        assert a == b, what
    else:
        assert a == pytest.approx(b, rel=1e-5, abs=1e-9), what


def test_two_ranks_record_what_one_process_records(
    db_url: str, sweep_assets: SweepAssets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # each rank: one thread of the two cores
    # First-step measurements of two ratios, then a trajectory of each (four real steps), all
    # through the queue. A later task of the sweep reuses the model the earlier one left, so
    # a rank that did not restore its shards bit for bit would record something else.
    body = sweep_assets.spec(
        ratios=[0.0, 1.0],
        batches=2,
        trajectory={"steps": 4, "measure_every": 2},
        planned_steps=12,
        tolerance=0.5,
    )
    one = settings_for(db_url, sweep_assets, tmp_path / "one", devices=1)
    single_id = submit(one, body)
    worker = Worker(one, worker_id="one")
    try:
        assert worker.run(exit_when_idle=True) == 4
    finally:
        worker.close()
    single = recorded(db_url, single_id)
    assert single["state"] == SweepState.succeeded, single["error"]

    two = settings_for(db_url, sweep_assets, tmp_path / "two", devices=2)
    sharded_id = submit(two, body)
    assert run_ranks(two, worker_id="two", stop=threading.Event(), exit_when_idle=True) == 4
    sharded = recorded(db_url, sharded_id)

    assert sharded["state"] == SweepState.succeeded, sharded["error"]
    assert sharded["tasks"] == single["tasks"]
    # The set-up's forwards counted once: every later task reused the sweep's model, as one
    # process does. Backwards: each rank ran one micro-batch of 8 sequences where one process
    # ran two (2 sets x 2 batches), and the 8 trajectory steps one each.
    (forwards, backwards), (one_forwards, one_backwards) = sharded["counts"], single["counts"]
    assert (forwards, backwards) == (one_forwards, one_backwards - 4)
    assert len(sharded["tasks"]) == 4 and {t[0] for t in sharded["tasks"]} == set(TaskKind)
    assert sharded["rows"].keys() == single["rows"].keys() and len(single["rows"]) == 4
    for key, want in single["rows"].items():
        got = sharded["rows"][key]
        assert (got.status, got.forwards, got.batches) == (want.status, want.forwards, want.batches)
        for name in ("eta_c", "eta_c_low", "eta_c_high", "loss", "loss_change"):
            close(getattr(got, name), getattr(want, name), (key, name))
        for a, b in zip(got.per_batch, want.per_batch, strict=True):
            assert (a["status"], a["forwards"]) == (b["status"], b["forwards"]), key
            close(a["eta_c"], b["eta_c"], (key, "per_batch"))
    assert {m.status for m in single["rows"].values()} >= {"ok"}
    assert sharded["points"].keys() == single["points"].keys() and len(single["points"]) == 12
    for key, want in single["points"].items():
        got = sharded["points"][key]
        assert (got.status, got.forwards) == (want.status, want.forwards), key
        for name in ("loss", "drift", "eta_c", "loss_change"):
            close(getattr(got, name), getattr(want, name), (key, name))
    rec, want_rec = sharded["recommendation"], single["recommendation"]
    assert rec is not None and want_rec is not None and rec["basis"] == want_rec["basis"]
    assert [r["ratio"] for r in rec["ranking"]] == [r["ratio"] for r in want_rec["ranking"]]


def test_a_users_error_fails_its_sweep_at_once_and_a_fresh_group_goes_on(
    db_url: str,
    sweep_assets: SweepAssets,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    settings = settings_for(db_url, sweep_assets, tmp_path, devices=2)
    # Too little pre-training text for 64 batches: every rank refuses it while preparing.
    bad = submit(settings, sweep_assets.spec(batches=64, batch_tokens=4096))
    good = submit(settings, sweep_assets.spec(ratios=[0.5], batches=1))
    with caplog.at_level("WARNING", logger="sharpmix.ranks"):
        run_ranks(settings, worker_id="g", stop=threading.Event(), exit_when_idle=True)
    failed, succeeded = recorded(db_url, bad), recorded(db_url, good)
    assert failed["state"] == SweepState.failed
    assert failed["error"] and "pretraining" in failed["error"] and "tokens" in failed["error"]
    assert [t[2] for t in failed["tasks"]].count(TaskState.failed) == 1  # tried once, not thrice
    assert succeeded["state"] == SweepState.succeeded, succeeded["error"]
    assert "group 1 is spent; starting a fresh one" in caplog.text


def _worker_process(
    db_url: str, assets: SweepAssets, home: Path, timeout: float = 30
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "SHARPMIX_DATABASE_URL": db_url,
        "SHARPMIX_HOME": str(home),
        "SHARPMIX_ALLOWED_ROOTS": str(assets.root),
        "SHARPMIX_DEVICE": "cpu",
        "SHARPMIX_DEVICES": "2",
        "SHARPMIX_MICRO_BATCH_TOKENS": str(HALF_BATCH_TOKENS),
        "SHARPMIX_LEASE_SECONDS": "4",
        "SHARPMIX_HEARTBEAT_SECONDS": "1",
        "SHARPMIX_DIST_TIMEOUT_SECONDS": str(timeout),
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    log = open(home / "worker.log", "wb")  # noqa: SIM115
    command = [sys.executable, "-m", "sharpmix.cli", "worker", "--id", "g"]
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=log)


def _running_task(db_url: str, *, measuring: bool = True) -> int | None:
    """A running task's id; with ``measuring``, only once its trial is recorded (set-up done)."""
    engine = make_engine(db_url)
    query = select(SweepTask.id).where(SweepTask.state == TaskState.running)
    if measuring:
        query = query.where(SweepTask.optuna_trial_number.is_not(None))
    try:
        with make_session_factory(engine)() as session:
            return session.scalar(query)
    finally:
        engine.dispose()


def _wait(until: Any, timeout: float, what: str, log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := until()) is not None:
            return value
        time.sleep(0.2)
    raise AssertionError(
        f"{what} within {timeout:.0f} s\n{log.read_text(errors='replace')[-4000:]}"
    )


def _succeeds_then_stops(
    proc: subprocess.Popen[bytes], db_url: str, sweep_id: str, timeout: float, log: Path
) -> None:
    """Wait for the sweep to end, require success, then SIGTERM the idle launcher: every rank
    exits, and the launcher with them."""
    state = _wait(
        lambda: s if (s := recorded(db_url, sweep_id)["state"]) != SweepState.running else None,
        timeout,
        "the sweep did not finish",
        log,
    )
    assert state == SweepState.succeeded, log.read_text()[-4000:]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def _kill_if_running(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("victim", [1, 0])
def test_a_rank_killed_mid_task_spends_the_group_and_a_fresh_one_completes_the_task_once(
    db_url: str, sweep_assets: SweepAssets, tmp_path: Path, victim: int
) -> None:
    settings = settings_for(db_url, sweep_assets, tmp_path, devices=2)
    sweep_id = submit(settings, sweep_assets.spec(ratios=[0.0, 0.5, 1.0], batches=2))
    log = tmp_path / "worker.log"
    proc = _worker_process(db_url, sweep_assets, tmp_path)
    try:
        task = _wait(lambda: _running_task(db_url), 120, "no task started", log)
        pid = int(re.findall(rf"sharpmix-rank{victim} pid (\d+)", log.read_text())[-1])
        os.kill(pid, signal.SIGKILL)
        # Rank 1 killed: rank 0's next collective fails at once (gloo sees the closed
        # connection), it fails the task as transient and a fresh group takes it up again.
        # Rank 0 killed: rank 1 has nothing to follow; the fresh group's rank 0 requeues the
        # task once its lease (4 s) has run out, and takes it.
        _succeeds_then_stops(proc, db_url, sweep_id, 180, log)
    finally:
        _kill_if_running(proc)
    text = log.read_text()
    assert "group 2: ranks" in text, text[-4000:]
    engine = make_engine(db_url)
    with make_session_factory(engine)() as session:
        tasks = {t.id: t for t in session.scalars(select(SweepTask))}
        rows = list(session.scalars(select(Measurement)))
    engine.dispose()
    assert {t.state for t in tasks.values()} == {TaskState.done}
    assert tasks[task].attempts == 2, text[-4000:]  # the killed try and the one that completed
    if victim == 1:  # the killed try failed as transient, its error kept
        assert "starting a fresh one" in text and "RuntimeError" in (tasks[task].error or "")
    else:  # no word from the dead rank 0: its lease ran out
        assert "rank 0 ended with -9" in text and tasks[task].error is None, text[-4000:]
    assert all(t.attempts == 1 for i, t in tasks.items() if i != task)
    keys = Counter((m.ratio, m.eval_set) for m in rows)
    assert len(keys) == 6 and set(keys.values()) == {1}  # each measured and counted once


def test_a_stalled_rank_times_the_group_out_and_a_fresh_one_completes_the_task(
    sweep_assets: SweepAssets, tmp_path: Path
) -> None:
    # On SQLite only: the queue's side is the killed rank's, on both backends, above.
    db_url = f"sqlite:///{tmp_path / 'stall.db'}"
    upgrade(db_url)
    settings = settings_for(db_url, sweep_assets, tmp_path, devices=2)
    sweep_id = submit(settings, sweep_assets.spec(ratios=[0.0, 1.0], batches=2))
    log = tmp_path / "worker.log"
    timeout = 15.0
    proc = _worker_process(db_url, sweep_assets, tmp_path, timeout=timeout)
    stalled = 0
    try:
        task = _wait(lambda: _running_task(db_url), 120, "no task started", log)
        stalled = int(re.findall(r"sharpmix-rank1 pid (\d+)", log.read_text())[-1])
        os.kill(stalled, signal.SIGSTOP)  # alive, its connections open, silent
        # Rank 0's next collective times out, it fails the task as transient and exits; the
        # launcher kills the stalled rank and starts a fresh group, which completes the sweep.
        _succeeds_then_stops(proc, db_url, sweep_id, timeout + 150, log)
    finally:
        _kill_if_running(proc)
    text = log.read_text()
    assert "starting a fresh one" in text and "group 2: ranks" in text, text[-4000:]
    with pytest.raises(ProcessLookupError):  # the launcher killed it
        os.kill(stalled, 0)
    rows = recorded(db_url, sweep_id)
    assert [t[2] for t in rows["tasks"]] == [TaskState.done] * 2 and len(rows["rows"]) == 4
    engine = make_engine(db_url)
    with make_session_factory(engine)() as session:
        row = session.get_one(SweepTask, task)
        assert row.attempts == 2 and "RuntimeError" in (row.error or ""), text[-4000:]
    engine.dispose()


def test_sigterm_mid_task_stops_every_rank_and_hands_the_task_back(
    db_url: str, sweep_assets: SweepAssets, tmp_path: Path
) -> None:
    settings = settings_for(db_url, sweep_assets, tmp_path, devices=2)
    submit(settings, sweep_assets.spec(ratios=[0.5], batches=4))
    log = tmp_path / "worker.log"
    proc = _worker_process(db_url, sweep_assets, tmp_path)
    try:
        # Claimed: the ranks are loading the sweep, with a checkpoint after every gradient batch.
        task = _wait(lambda: _running_task(db_url, measuring=False), 120, "no task claimed", log)
        proc.send_signal(signal.SIGTERM)
        # Rank 0 stops at its next checkpoint and tells rank 1, which stops there too; both
        # leave the group and the launcher exits.
        assert proc.wait(timeout=60) == 0, log.read_text()[-4000:]
    finally:
        _kill_if_running(proc)
    text = log.read_text()
    assert "handed back" in text, text[-4000:]
    assert f"rank 1: task {task} stopped (shutdown)" in text, text[-4000:]
    assert "spent" not in text, text[-4000:]
    engine = make_engine(db_url)
    with make_session_factory(engine)() as session:
        row = session.get_one(SweepTask, task)
        assert (row.state, row.worker_id, row.attempts) == (TaskState.queued, None, 0)
        assert session.scalar(select(Measurement.id)) is None
    engine.dispose()
