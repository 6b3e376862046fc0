"""k-domain mixes over HTTP: bad mixes are 422 naming the field, every pre-training source's
path is checked, and a mix's weights go from a worker's result through the database to the
trials, the recommendation and the export."""

from __future__ import annotations

import json
from typing import Any

import pytest

from contract.mix import Candidate
from contract.results import BatchResult, MeasurementResult, Status, TaskResult
from contract.spec import Role, SweepSpec
from service.db import queue
from tests.service.support import Api, sweep_body
from workers.recommend import recommend

pytestmark = pytest.mark.db

MIXES = [{"web": 0.5, "more": 0.1, "code": 0.4}, {"web": 0.1, "more": 0.1, "code": 0.8}]


def k3(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "pretraining": [
            {"name": "web", "path": "data/web.jsonl"},
            {"name": "more", "path": "data/web.jsonl", "max": 0.5},
        ],
        "ratios": None,
        "mixes": MIXES,
    }
    return sweep_body(**{**fields, **changes})


def refused(api: Api, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = api.client.post("/v1/sweeps", json=body, headers=api.headers)
    assert response.status_code == 422, response.text
    detail: list[dict[str, Any]] = response.json()["detail"]
    return detail


def test_bad_mixes_are_422_naming_the_field(api: Api) -> None:
    cases: list[tuple[dict[str, Any], list[Any], str]] = [
        (k3(mixes=[{"web": 0.5, "code": 0.4}]), ["body", "mixes", 0], "sum to 0.9"),
        (k3(mixes=[{"web": 0.5, "wiki": 0.5}]), ["body"], "'mixes[0]' names 'wiki'"),
        (k3(mixes=[{"web": 0.1, "more": 0.6, "code": 0.3}]), ["body"], "('pretraining[1]')"),
        (
            k3(finetuning=[{"name": "code", "path": "data/code.jsonl", "min": 0.9, "max": 0.1}]),
            ["body", "finetuning", 0],
            "'min' (0.9) is above 'max' (0.1)",
        ),
        (k3(mixes=None, mix_search={"trials": 1}), ["body", "mix_search", "trials"], "2"),
        (k3(mixes=None, ratios=[0.5]), ["body"], "'pretraining[1]' set 'min'"),
        (
            k3(pretraining=[{"name": "web", "path": "data/web.jsonl"}] * 2),
            ["body"],
            "used twice: web",
        ),
    ]
    for body, loc, message in cases:
        detail = refused(api, body)
        assert any(d["loc"] == loc and message in d["msg"] for d in detail), (loc, detail)
    over = refused(api, k3(mixes=None, mix_search={"trials": 129}))
    assert over[0]["loc"] == ["body", "mix_search", "trials"], over


def test_every_pre_training_source_path_is_checked(api: Api) -> None:
    body = k3()
    body["pretraining"][1]["path"] = "data/missing.jsonl"
    assert [d["loc"] for d in refused(api, body)] == [["body", "pretraining", 1, "path"]]


def _result(spec: SweepSpec, mix: Candidate, pt_low: float) -> TaskResult:
    measurements = [
        MeasurementResult(
            eval_set=name,
            role=spec.role(name),
            status=Status.ok,
            eta_c=pt_low * 1.25,
            eta_c_low=pt_low if spec.role(name) in (Role.pretraining, Role.retention) else 1.0,
            eta_c_high=pt_low * 1.5,
            sharpness=2 / (pt_low * 1.25),
            spread=1.1,
            loss=3.0,
            loss_change=-0.01,
            forwards=10,
            batches=1,
            per_batch=[BatchResult(pt_low, pt_low, pt_low * 2, Status.ok, 10, 3.0, -0.01)],
            weights=mix.weights,
        )
        for name in ("web", "more", "code", "wiki")
    ]
    return TaskResult(
        ratio=mix.ratio, measurements=measurements, forwards=40, backwards=0, seconds=1
    )


def test_a_mix_goes_from_the_worker_through_the_database_to_the_answer(api: Api) -> None:
    submitted = api.client.post("/v1/sweeps", json=k3(), headers=api.headers)
    assert submitted.status_code == 201, submitted.text
    sweep_id = submitted.json()["id"]
    spec = SweepSpec.model_validate(k3())
    sessions = api.app.state.session_factory
    # As a worker would: claim each task, measure its slot's mix, complete it (the second mix,
    # with more fine-tuning data, keeps every retention rate above the planned 1e-3 too).
    for _ in MIXES:
        task = queue.claim_task(sessions, "w1", lease_seconds=30)
        assert task is not None and task.candidate is None
        mix = Candidate.of_mix(spec, MIXES[task.slot])
        assert queue.complete_task(sessions, task, "w1", _result(spec, mix, 2e-3))
    assert queue.finalize_sweep(sessions, sweep_id, recommend)

    rows = api.client.get(f"/v1/sweeps/{sweep_id}/trials", headers=api.headers).json()
    assert sorted(json.dumps(r["weights"], sort_keys=True) for r in rows) == sorted(
        json.dumps(m, sort_keys=True) for m in MIXES for _ in range(4)
    )
    answer = api.client.get(f"/v1/sweeps/{sweep_id}/recommendation", headers=api.headers).json()
    assert answer["weights"] == MIXES[1] and answer["ratio"] == pytest.approx(0.2)
    exported = api.client.get(
        f"/v1/sweeps/{sweep_id}/export", params={"format": "json"}, headers=api.headers
    )
    assert exported.status_code == 200, exported.text
    shares = {row["name"]: row["token_share"] for row in exported.json()["sources"]}
    assert shares == pytest.approx(MIXES[1])
    plot = api.client.get(f"/v1/sweeps/{sweep_id}/plot.png", headers=api.headers)
    assert plot.status_code == 200 and plot.content.startswith(b"\x89PNG")
    # A ratio alone names no k-domain mix.
    by_ratio = api.client.get(
        f"/v1/sweeps/{sweep_id}/export", params={"ratio": 0.2}, headers=api.headers
    )
    assert by_ratio.status_code == 409 and "k-domain" in by_ratio.text
