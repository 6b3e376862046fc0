"""The /v1/sweeps resource: submit, idempotent replay, pages, progress, trials, recommendation,
plot and cancel."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import select

from contract.states import SweepState, TaskState
from service.db.models import SweepTask, utcnow
from tests.service.support import Api, add_measurement, finish, set_state, sweep_body

pytestmark = pytest.mark.db


def test_submit_returns_the_queued_sweep(api: Api) -> None:
    sweep = api.submit(ratios=[0.0, 0.5])
    assert sweep["state"] == "queued"
    assert sweep["spec"]["ratios"] == [0.0, 0.5]
    assert sweep["progress"] == {
        "tasks_total": 2,
        "tasks_done": 0,
        "forwards": 0,
        "backwards": 0,
        "optimizer_steps": 0,
        "compute_seconds": 0.0,
        "eta_seconds": None,
    }
    assert sweep["created_at"].endswith(("Z", "+00:00"))
    assert sweep["study_name"] == f"sharpmix-{sweep['id']}"
    assert sweep["edition"] == 1
    got = api.client.get(f"/v1/sweeps/{sweep['id']}", headers=api.headers)
    assert got.status_code == 200
    assert got.json() == sweep


def test_idempotency_key_gives_the_same_sweep_or_422(api: Api) -> None:
    headers = {**api.headers, "Idempotency-Key": "run-7"}
    first = api.client.post("/v1/sweeps", json=sweep_body(), headers=headers)
    replay = api.client.post("/v1/sweeps", json=sweep_body(), headers=headers)
    other = api.client.post("/v1/sweeps", json=sweep_body(seed=3), headers=headers)
    assert (first.status_code, replay.status_code, other.status_code) == (201, 200, 422)
    assert replay.json()["id"] == first.json()["id"]
    assert other.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert "different body" in other.json()["detail"][0]["msg"]
    page = api.client.get("/v1/sweeps", headers=api.headers).json()
    assert [s["id"] for s in page["items"]] == [first.json()["id"]]


def test_pages_follow_next_cursor(api: Api) -> None:
    made = [api.submit(seed=i)["id"] for i in range(5)]
    seen: list[str] = []
    params: dict[str, str | int] = {"limit": 2}
    while True:
        page = api.client.get("/v1/sweeps", params=params, headers=api.headers).json()
        seen += [sweep["id"] for sweep in page["items"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == made[::-1]


def test_progress_estimates_the_time_left(api: Api) -> None:
    sweep_id = api.submit(ratios=[0.0, 0.25, 0.5, 0.75])["id"]
    set_state(api, sweep_id, SweepState.running, tasks_done=1, forwards=120, compute_seconds=30.0)
    progress = api.client.get(f"/v1/sweeps/{sweep_id}", headers=api.headers).json()["progress"]
    assert progress["tasks_done"] == 1
    assert progress["forwards"] == 120
    assert progress["eta_seconds"] == pytest.approx(90.0)


def test_trials_report_every_measurement_with_non_finite_as_null(api: Api) -> None:
    sweep_id = api.submit()["id"]
    add_measurement(api, sweep_id, 0.25, "web", 2e-2)
    add_measurement(api, sweep_id, 0.0, "web", 1e-2)
    # No instability found on the fine-tuning set: eta_c is infinite, and JSON has no infinity
    # (PostgreSQL's JSON type refuses the token, so per-batch values hold null there).
    add_measurement(api, sweep_id, 0.0, "code", math.inf, sharpness=0.0, per_batch=[None, None])
    rows = api.client.get(f"/v1/sweeps/{sweep_id}/trials", headers=api.headers).json()
    assert [(r["ratio"], r["eval_set"]) for r in rows] == [
        (0.0, "code"),
        (0.0, "web"),
        (0.25, "web"),
    ]
    no_instability = rows[0]
    assert no_instability["eta_c"] is None
    assert no_instability["eta_c_low"] is None
    assert no_instability["eta_c_high"] is None
    assert no_instability["sharpness"] == 0.0
    assert rows[1]["eta_c"] == pytest.approx(1e-2)
    assert rows[1]["eta_c_low"] == pytest.approx(8e-3)
    assert rows[1]["role"] == "pretraining"
    assert rows[1]["forwards"] == 40


def test_recommendation_is_409_until_the_sweep_succeeded(api: Api) -> None:
    sweep_id = api.submit()["id"]
    path = f"/v1/sweeps/{sweep_id}/recommendation"
    waiting = api.client.get(path, headers=api.headers)
    assert waiting.status_code == 409
    assert "is queued" in waiting.json()["detail"]
    stored = finish(api, sweep_id, ratio=0.25)
    answer = api.client.get(path, headers=api.headers)
    assert answer.status_code == 200
    assert answer.json() == stored.model_dump(mode="json")


def test_plot_is_409_before_any_measurement_and_a_png_after(api: Api) -> None:
    sweep_id = api.submit()["id"]
    path = f"/v1/sweeps/{sweep_id}/plot.png"
    empty = api.client.get(path, headers=api.headers)
    assert empty.status_code == 409
    assert "no measurement yet" in empty.json()["detail"]
    set_state(api, sweep_id, SweepState.running)
    add_measurement(api, sweep_id, 0.0, "web", 1e-2)
    running = api.client.get(path, headers=api.headers)
    add_measurement(api, sweep_id, 0.25, "web", 3e-2)
    finish(api, sweep_id)
    done = api.client.get(path, headers=api.headers)
    for response in (running, done):
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/png"
        assert response.content.startswith(b"\x89PNG\r\n\x1a\n")


def test_cancel_a_queued_sweep_at_once_and_refuse_a_second_time(api: Api) -> None:
    sweep_id = api.submit()["id"]
    cancelled = api.client.post(f"/v1/sweeps/{sweep_id}/cancel", headers=api.headers)
    assert cancelled.status_code == 200
    assert (cancelled.json()["state"], cancelled.json()["cancel_requested"]) == ("cancelled", True)
    again = api.client.post(f"/v1/sweeps/{sweep_id}/cancel", headers=api.headers)
    assert again.status_code == 409
    assert "already cancelled" in again.json()["detail"]


def test_cancel_a_running_sweep_leaves_it_to_the_worker(api: Api) -> None:
    sweep_id = api.submit()["id"]
    set_state(api, sweep_id, SweepState.running)
    with api.session() as session:  # a worker holds the first task
        task = session.scalars(select(SweepTask).where(SweepTask.sweep_id == sweep_id)).first()
        assert task is not None
        task.state, task.worker_id, task.heartbeat_at = TaskState.running, "w1", utcnow()
        session.commit()
    flagged = api.client.post(f"/v1/sweeps/{sweep_id}/cancel", headers=api.headers).json()
    assert (flagged["state"], flagged["cancel_requested"]) == ("running", True)


def test_cancel_a_running_sweep_between_tasks_at_once(api: Api) -> None:
    sweep_id = api.submit()["id"]
    set_state(api, sweep_id, SweepState.running)  # started, but no worker holds a task now
    cancelled = api.client.post(f"/v1/sweeps/{sweep_id}/cancel", headers=api.headers).json()
    assert (cancelled["state"], cancelled["cancel_requested"]) == ("cancelled", True)


def test_cancel_a_succeeded_sweep_is_409(api: Api) -> None:
    sweep_id = api.submit()["id"]
    finish(api, sweep_id)
    refused = api.client.post(f"/v1/sweeps/{sweep_id}/cancel", headers=api.headers)
    assert refused.status_code == 409
    assert "already succeeded" in refused.json()["detail"]
