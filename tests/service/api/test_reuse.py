"""Reusing finished sweeps over HTTP (issue 11, part 5): adding candidates, warm starts and the
comparison of two sweeps, with their refusals (404, 409, 422)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from sqlalchemy import select

from contract.reuse import SweepComparison
from contract.spec import SweepSpec
from contract.states import SweepState, TaskKind, TaskState
from service.db.models import Sweep, SweepTask
from tests.service.support import Api, add_measurement, finish, set_state, sweep_body

pytestmark = pytest.mark.db


def finished(api: Api, **changes: Any) -> str:
    sweep_id: str = api.submit(**changes)["id"]
    with api.session() as session:
        for task in session.scalars(select(SweepTask).where(SweepTask.sweep_id == sweep_id)):
            task.state = TaskState.done
        session.commit()
    finish(api, sweep_id)
    return sweep_id


def add(api: Api, sweep_id: str, ratios: list[float], key: str | None = None) -> Any:
    headers = {**api.headers, **({"Idempotency-Key": key} if key else {})}
    return api.client.post(
        f"/v1/sweeps/{sweep_id}/candidates", json={"ratios": ratios}, headers=headers
    )


def tasks_of(api: Api, sweep_id: str) -> list[SweepTask]:
    with api.session() as session:
        query = select(SweepTask).where(SweepTask.sweep_id == sweep_id).order_by(SweepTask.slot)
        return list(session.scalars(query))


def test_added_candidates_reopen_the_sweep_once_per_key(api: Api) -> None:
    sweep_id = finished(api)
    response = add(api, sweep_id, [0.75, 1.0], key="more-1")
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["state"] == "running" and body["finished_at"] is None
    assert body["edition"] == 2  # its next final state is delivered again
    assert body["spec"]["ratios"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert body["progress"]["tasks_total"] == 5
    new = [(t.slot, t.ratio, t.state) for t in tasks_of(api, sweep_id)][3:]
    assert new == [(3, 0.75, TaskState.queued), (4, 1.0, TaskState.queued)]
    # Until the new ratios are measured there is no answer.
    rec = api.client.get(f"/v1/sweeps/{sweep_id}/recommendation", headers=api.headers)
    assert rec.status_code == 409

    # A retry with the same key adds nothing, even after the sweep has finished again.
    again = add(api, sweep_id, [0.75, 1.0], key="more-1")
    assert again.status_code == 200 and again.json()["progress"]["tasks_total"] == 5
    assert again.json()["edition"] == 2
    set_state(api, sweep_id, SweepState.succeeded)
    again = add(api, sweep_id, [0.75, 1.0], key="more-1")
    assert again.status_code == 200 and len(tasks_of(api, sweep_id)) == 5
    # The same key with other ratios is a mistake in the request.
    other = add(api, sweep_id, [0.9], key="more-1")
    assert other.status_code == 422
    assert other.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    # The sweep's original submission still replays to it: its request digest is unchanged.
    with api.session() as session:
        sweep = session.get_one(Sweep, sweep_id)
        assert sweep.additions is not None and len(sweep.additions) == 1
        assert sweep.spec_sha256 != SweepSpec.model_validate(sweep.spec).sha256()


def test_a_trajectory_sweep_gets_a_trajectory_per_new_ratio(api: Api) -> None:
    sweep_id = finished(api, trajectory={"steps": 4, "measure_every": 2})
    assert add(api, sweep_id, [0.75]).status_code == 202
    kinds = [(t.ratio, t.kind) for t in tasks_of(api, sweep_id)[6:]]
    assert kinds == [(0.75, TaskKind.measure), (0.75, TaskKind.trajectory)]


@pytest.mark.parametrize(
    ("ratios", "message"),
    [([0.25], "already candidates"), ([0.3, 0.3], "twice"), ([1.5], "less than or equal")],
)
def test_bad_ratios_are_422_naming_them(api: Api, ratios: list[float], message: str) -> None:
    sweep_id = finished(api)
    response = add(api, sweep_id, ratios)
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert "ratios" in detail["loc"] and message in detail["msg"]


def test_only_a_succeeded_sweep_of_listed_ratios_with_unchanged_files(api: Api) -> None:
    running = api.submit()["id"]
    response = add(api, running, [0.75])
    assert response.status_code == 409 and "queued" in response.json()["detail"]

    ranged = finished(api, ratios=None, ratio_range={"low": 0.0, "high": 1.0, "trials": 2})
    response = add(api, ranged, [0.75])
    assert response.status_code == 409 and "ratio_range" in response.json()["detail"]

    mixed = finished(api, ratios=None, mixes=[{"web": 0.5, "code": 0.5}, {"web": 0.2, "code": 0.8}])
    response = add(api, mixed, [0.75])
    assert response.status_code == 409 and "'mixes'" in response.json()["detail"]

    sweep_id = finished(api)
    (api.root / "data" / "code.jsonl").write_text('{"text": "changed"}\n' * 3)
    response = add(api, sweep_id, [0.75])
    assert response.status_code == 409
    assert "data.code" in response.json()["detail"] and "data.web" not in response.json()["detail"]
    assert len(tasks_of(api, sweep_id)) == 3  # nothing was added

    old = finished(api)
    set_state(api, old, SweepState.succeeded, fingerprint=None)
    response = add(api, old, [0.75])
    assert response.status_code == 409 and "no fingerprint" in response.json()["detail"]


def test_the_model_weights_are_part_of_the_fingerprint(api: Api) -> None:
    sweep_id = finished(api)
    weights = api.root / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # the same bytes, rewritten a second later
    info = weights.stat()
    os.utime(weights, ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))
    response = add(api, sweep_id, [0.75])
    assert response.status_code == 409 and "model" in response.json()["detail"]


def test_another_tenants_sweep_is_not_found(api: Api) -> None:
    sweep_id = finished(api)
    other = api.key_for("globex")
    response = api.client.post(
        f"/v1/sweeps/{sweep_id}/candidates", json={"ratios": [0.75]}, headers=other
    )
    assert response.status_code == 404
    assert add(api, "0" * 32, [0.75]).status_code == 404


def test_warm_start_must_name_a_sweep_of_yours(api: Api) -> None:
    mine = finished(api)
    ok = api.client.post("/v1/sweeps", json=sweep_body(warm_start_from=mine), headers=api.headers)
    assert ok.status_code == 201 and ok.json()["spec"]["warm_start_from"] == mine
    for unknown in ("f" * 32, api_other_sweep(api)):
        response = api.client.post(
            "/v1/sweeps", json=sweep_body(warm_start_from=unknown), headers=api.headers
        )
        assert response.status_code == 422
        detail = response.json()["detail"][0]
        assert detail["loc"] == ["body", "warm_start_from"] and "of yours" in detail["msg"]


def api_other_sweep(api: Api) -> str:
    other = api.key_for("initech")
    response = api.client.post("/v1/sweeps", json=sweep_body(), headers=other)
    assert response.status_code == 201
    sweep_id: str = response.json()["id"]
    return sweep_id


def test_compare_two_sweeps_side_by_side(api: Api) -> None:
    a = api.submit()["id"]
    b = api.submit(learning_rate=3e-3, ratios=[0.25, 0.5, 0.75])["id"]
    for ratio, eta in ((0.0, 5e-4), (0.25, 2e-3)):
        add_measurement(api, a, ratio, "web", eta)
    add_measurement(api, b, 0.25, "web", 4e-3, loss_change=0.02)
    add_measurement(api, b, 0.75, "code", 1e-2)
    finish(api, a, ratio=0.25)

    response = api.client.get(f"/v1/sweeps/compare?a={a}&b={b}", headers=api.headers)
    assert response.status_code == 200, response.text
    result = SweepComparison.model_validate(response.json())
    assert [r.ratio for r in result.ratios] == [0.0, 0.25, 0.75]
    at = {r.ratio: r for r in result.ratios}
    web = at[0.25].sets["web"]
    assert web["a"] is not None and web["b"] is not None
    assert web["a"].eta_c == pytest.approx(2e-3) and web["b"].eta_c == pytest.approx(4e-3)
    assert web["b"].loss_change == pytest.approx(0.02)
    assert at[0.0].sets["web"]["b"] is None and at[0.75].sets["code"]["a"] is None
    # First-step verdicts at each sweep's own rate: lower bound 0.8 * eta_c against lr.
    assert at[0.25].in_basin_a is True  # 1.6e-3 > 1e-3
    assert at[0.25].in_basin_b is True  # 3.2e-3 > 3e-3
    assert at[0.0].in_basin_a is False and at[0.0].in_basin_b is None
    assert result.recommendation_a is not None and result.recommendation_a.ratio == 0.25
    assert result.recommendation_b is None and result.state_b == "queued"
    fields = {d.field: (d.a, d.b) for d in result.spec_differences}
    assert fields == {
        "learning_rate": (1e-3, 3e-3),
        "ratios": ([0.0, 0.25, 0.5], [0.25, 0.5, 0.75]),
    }


def test_compare_refuses_unknown_and_foreign_sweeps(api: Api) -> None:
    a = api.submit()["id"]
    foreign = api_other_sweep(api)
    for b in ("0" * 32, foreign):
        response = api.client.get(f"/v1/sweeps/compare?a={a}&b={b}", headers=api.headers)
        assert response.status_code == 404
    missing = api.client.get(f"/v1/sweeps/compare?a={a}", headers=api.headers)
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["query", "b"]
