"""MLflow: a finished sweep becomes one run in a real local tracking store (SQLite file), with
the spec as params, per-ratio results as metrics, and the plot and recommendation as artifacts;
a sweep reopened by added candidates gets a run per edition."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.notify import DeliveryLoop
from service.notify.mlflow_runs import flatten_params, ratio_step, run_name
from tests.service.notify.conftest import ApiFactory
from tests.service.support import add_candidates, add_measurement, finish, finish_reopened

mlflow = pytest.importorskip("mlflow")

pytestmark = [pytest.mark.db, pytest.mark.slow]


@pytest.fixture
def empty_db_url(tmp_path: Path) -> str:
    """The sweep database on SQLite only: what reaches MLflow does not depend on its backend
    (the outbox itself is tested on both in test_webhooks.py), and creating an MLflow store
    takes seconds."""
    return f"sqlite:///{tmp_path / 'sharpmix.db'}"


def test_a_finished_sweep_is_logged_as_one_run(hooks_api: ApiFactory, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    api = hooks_api(
        mlflow_tracking_uri=store,
        mlflow_experiment="mixing",
        mlflow_artifact_location=str(tmp_path / "artifacts"),
    )
    sweep = api.submit(ratios=[0.0, 0.25, 0.5], notify_url="http://127.0.0.1:9/t0ken")
    for ratio, eta in ((0.0, 1e-4), (0.25, 2e-3), (0.5, 3e-3)):
        add_measurement(api, sweep["id"], ratio, "web", eta)
        add_measurement(api, sweep["id"], ratio, "code", eta * 2)
    recommendation = finish(api, sweep["id"], ratio=0.25)

    loop = DeliveryLoop(api.app.state.settings, api.app.state.session_factory)
    loop.run_once()
    loop.run_once()  # nothing new: still one run

    rows = api.client.get(f"/v1/sweeps/{sweep['id']}/deliveries", headers=api.headers).json()
    by_channel = {row["channel"]: row for row in rows}
    assert by_channel["mlflow"]["state"] == "delivered", by_channel["mlflow"]
    assert by_channel["mlflow"]["target"] == store
    assert by_channel["webhook"]["state"] == "pending"  # nothing listens on port 9: retried

    client = mlflow.tracking.MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("mixing")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == f"sweep-{sweep['id']}"
    assert run.info.status == "FINISHED"
    assert run.data.tags["sharpmix.sweep_id"] == sweep["id"]
    assert run.data.tags["sharpmix.complete"] == "1"
    assert run.data.tags["sharpmix.delivery_id"] == by_channel["mlflow"]["id"]
    params = run.data.params
    assert params["learning_rate"] == "0.001"
    assert params["finetuning.0.path"] == "data/code.jsonl"
    assert params["ratios.1"] == "0.25"
    assert "notify_url" not in params  # webhook URLs often carry a token
    assert float(run.data.metrics["recommended_ratio"]) == recommendation.ratio
    history = client.get_metric_history(run.info.run_id, "eta_c/web")
    assert sorted((m.step, m.value) for m in history) == [(0, 1e-4), (250, 2e-3), (500, 3e-3)]
    lows = client.get_metric_history(run.info.run_id, "eta_c_low/code")
    assert sorted(m.value for m in lows) == pytest.approx([1.6e-4, 3.2e-3, 4.8e-3])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"plot.png", "recommendation.json", "spec.json"}
    local = Path(client.download_artifacts(run.info.run_id, "recommendation.json", str(tmp_path)))
    assert json.loads(local.read_text())["ratio"] == 0.25
    spec_file = Path(client.download_artifacts(run.info.run_id, "spec.json", str(tmp_path)))
    assert "t0ken" not in spec_file.read_text()
    png = Path(client.download_artifacts(run.info.run_id, "plot.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_edition_of_a_reopened_sweep_is_a_run_of_its_own(
    hooks_api: ApiFactory, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    api = hooks_api(
        mlflow_tracking_uri=store,
        mlflow_experiment="mixing",
        mlflow_artifact_location=str(tmp_path / "artifacts"),
    )
    sweep = api.submit(ratios=[0.0, 0.25, 0.5])
    for ratio, eta in ((0.0, 1e-4), (0.25, 2e-3), (0.5, 3e-3)):
        add_measurement(api, sweep["id"], ratio, "web", eta)
    finish(api, sweep["id"], ratio=0.25)
    loop = DeliveryLoop(api.app.state.settings, api.app.state.session_factory)
    loop.run_once()
    add_candidates(api, sweep["id"], [0.75])
    add_measurement(api, sweep["id"], 0.75, "web", 4e-3)
    finish_reopened(api, sweep["id"], ratio=0.75)
    loop.run_once()
    loop.run_once()  # nothing new: still one run per edition

    rows = api.client.get(f"/v1/sweeps/{sweep['id']}/deliveries", headers=api.headers).json()
    delivered = {r["edition"]: r["id"] for r in rows if r["channel"] == "mlflow"}
    assert [r["state"] for r in rows if r["channel"] == "mlflow"] == ["delivered", "delivered"]
    client = mlflow.tracking.MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("mixing")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`sharpmix.sweep_id` = '{sweep['id']}'"
    )
    by_edition = {int(run.data.tags["sharpmix.edition"]): run for run in runs}
    assert sorted(by_edition) == [1, 2]
    first, second = by_edition[1], by_edition[2]
    assert first.info.run_name == run_name(sweep["id"], 1) == f"sweep-{sweep['id']}"
    assert second.info.run_name == run_name(sweep["id"], 2) == f"sweep-{sweep['id']}-e2"
    assert first.data.tags["sharpmix.delivery_id"] == delivered[1]
    assert second.data.tags["sharpmix.delivery_id"] == delivered[2]
    # The first run stays the answer the sweep gave then; the second holds the grown sweep.
    assert first.data.metrics["recommended_ratio"] == 0.25
    assert second.data.metrics["recommended_ratio"] == 0.75
    assert "ratios.3" not in first.data.params and second.data.params["ratios.3"] == "0.75"
    steps = [
        sorted(m.step for m in client.get_metric_history(run.info.run_id, "eta_c/web"))
        for run in (first, second)
    ]
    assert steps == [[0, 250, 500], [0, 250, 500, 750]]
    assert {run.info.status for run in runs} == {"FINISHED"}


def test_an_unreachable_tracking_server_is_retried(
    hooks_api: ApiFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = hooks_api(mlflow_tracking_uri="http://127.0.0.1:9", webhook_timeout_seconds=1.0)
    sweep = api.submit()
    api.client.post(f"/v1/sweeps/{sweep['id']}/cancel", headers=api.headers)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast, we retry ourselves
    DeliveryLoop(api.app.state.settings, api.app.state.session_factory).run_once()
    rows = api.client.get(f"/v1/sweeps/{sweep['id']}/deliveries", headers=api.headers).json()
    (row,) = [r for r in rows if r["channel"] == "mlflow"]
    assert row["state"] == "pending"
    assert row["attempts"] == 1
    assert row["last_error"]


@pytest.mark.unit
def test_params_flatten_and_ratio_steps() -> None:
    flat = flatten_params({"a": {"b": [1, {"c": None}]}, "d": [], "e": "x" * 7000})
    assert flat == {"a.b.0": "1", "a.b.1.c": "", "d": "[]", "e": "x" * 6000}
    assert [ratio_step(r) for r in (0.0, 0.25, 0.3333, 1.0)] == [0, 250, 333, 1000]
