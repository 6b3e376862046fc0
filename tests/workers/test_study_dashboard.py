"""optuna-dashboard tells the truth about a real sweep: served locally over HTTP on the sweep's
database, it shows the answer as the best (feasible) trial, each trial's constraint and per-set
eta_c, interval and loss change, and the study's answer."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import pytest
from optuna.storages import RDBStorage

from contract.states import SweepState
from service.config import Settings
from service.db.engine import make_engine, make_session_factory
from service.db.models import Sweep
from service.notify import DeliveryLoop
from tests.conftest import SweepAssets
from tests.workers.test_worker import settings_for, submit
from workers.study import flat_objective
from workers.worker import Worker

dashboard = pytest.importorskip("optuna_dashboard")

pytestmark = [pytest.mark.db, pytest.mark.slow]


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def empty_db_url(tmp_path: Path) -> str:
    """SQLite only: the dashboard reads Optuna's storage API, the same on every backend, and the
    sweep costs seconds of CPU."""
    return f"sqlite:///{tmp_path / 'sharpmix.db'}"


@pytest.fixture
def served(db_url: str) -> Iterator[str]:
    """optuna-dashboard's own app on the sweep database, on a free local port."""
    store = RDBStorage(db_url)
    server: WSGIServer = make_server("127.0.0.1", 0, dashboard.wsgi(store), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        store.engine.dispose()


def run_sweep(settings: Settings, assets: SweepAssets) -> Sweep:
    # A small planned rate: ratio 0 (pure fine-tuning data) still raises the pre-training loss at
    # once, the others keep it flat, so the smallest ratio is not the answer.
    sweep_id = submit(settings, assets.spec(learning_rate=1e-5))
    worker = Worker(settings, worker_id="w1")
    try:
        assert worker.run(exit_when_idle=True) == 3
    finally:
        worker.close()
    engine = make_engine(settings.resolved_database_url)
    sessions = make_session_factory(engine)
    DeliveryLoop(settings, sessions).run_once()  # writes the answer into the study
    with sessions() as session:
        sweep = session.get_one(Sweep, sweep_id)
    engine.dispose()
    return sweep


def test_the_dashboard_shows_the_answer_as_the_best_feasible_trial(
    db_url: str, sweep_assets: SweepAssets, tmp_path: Path, served: str
) -> None:
    sweep = run_sweep(settings_for(db_url, sweep_assets, tmp_path), sweep_assets)
    assert sweep.state == SweepState.succeeded
    answer = sweep.recommendation["ratio"] if sweep.recommendation else None
    assert answer is not None and answer > 0.0

    studies = httpx.get(f"{served}/api/studies").json()["study_summaries"]
    (entry,) = [s for s in studies if s["study_name"] == sweep.study_name]
    detail = httpx.get(f"{served}/api/studies/{entry['study_id']}").json()

    (best,) = detail["best_trials"]
    assert best["params"][0]["name"] == "ratio"
    assert float(best["params"][0]["param_external_value"]) == answer
    assert all(c <= 0 for c in best["constraints"])  # feasible
    by_ratio = {float(t["params"][0]["param_external_value"]): t for t in detail["trials"]}
    assert sorted(by_ratio) == [0.0, 0.5, 1.0]
    zero = by_ratio[0.0]
    assert zero["constraints"] and zero["constraints"][0] > 0  # the dashboard sees it infeasible
    assert zero["values"][0] == pytest.approx(flat_objective(0.0, zero["constraints"][0]))
    attrs = {a["key"]: a["value"] for a in best["user_attrs"]}
    for name in ("general", "math"):
        low, eta, high = (float(attrs[f"{name}.{k}"]) for k in ("eta_c_low", "eta_c", "eta_c_high"))
        assert 0 < low <= eta <= high
        assert f"{name}.loss_change" in attrs
        assert attrs[f"{name}.status"] == "ok"
    study_attrs = {a["key"]: a["value"] for a in detail["user_attrs"]}
    assert float(study_attrs["answer_ratio"]) == answer
    assert int(study_attrs["answer_trial"]) == best["number"]
    assert float(study_attrs["planned_lr"]) == 1e-5
    assert study_attrs["sweep_id"] == sweep.id
    assert study_attrs["objective"] == "flat_pretraining"
