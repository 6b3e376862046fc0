"""Invalid sweeps get 422 naming the field; oversized bodies get 413."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from tests.service.support import Api, sweep_body

pytestmark = pytest.mark.db


def loc_of(api: Api, content: bytes) -> list[list[Any]]:
    response = api.client.post(
        "/v1/sweeps",
        content=content,
        headers={**api.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert all(set(item) == {"loc", "msg", "type"} and item["msg"] for item in detail)
    return [item["loc"] for item in detail]


def post(api: Api, **changes: Any) -> list[list[Any]]:
    return loc_of(api, json.dumps(sweep_body(**changes)).encode())


@pytest.mark.parametrize(
    ("literal", "field"),
    [
        ('"ratios": [0.0, NaN]', ["body", "ratios", "list", 1]),
        ('"ratios": [Infinity]', ["body", "ratios", "list", 0]),
        ('"ratios": [-Infinity, 0.5]', ["body", "ratios", "list", 0]),
        ('"learning_rate": NaN', ["body", "learning_rate"]),
    ],
)
def test_non_finite_numbers_are_refused(api: Api, literal: str, field: list[Any]) -> None:
    body = json.dumps(sweep_body(ratios=None, learning_rate=None))
    # Python's JSON parser reads NaN and Infinity literals, so the server must refuse them itself.
    key = literal.split(":")[0]
    body = body.replace(f"{key}: null", literal)
    assert field in loc_of(api, body.encode())


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"ratios": [0.5, 1.5]}, ["body", "ratios", "list", 1]),
        ({"ratios": [-0.1]}, ["body", "ratios", "list", 0]),
        ({"learning_rate": 0}, ["body", "learning_rate"]),
        ({"learning_rate": -1e-4}, ["body", "learning_rate"]),
        ({"ratio_range": {"low": 0.5, "high": 2, "trials": 4}}, ["body", "ratio_range", "high"]),
    ],
)
def test_out_of_range_values_are_refused(
    api: Api, changes: dict[str, Any], field: list[Any]
) -> None:
    assert field in post(api, **changes)


def test_neither_or_both_ratio_forms_are_refused(api: Api) -> None:
    neither = post(api, ratios=None)
    both = post(api, ratio_range={"low": 0.0, "high": 0.5, "trials": 4})
    assert neither == both == [["body"]]


def test_sizes_over_the_operator_limits_are_refused(api: Api) -> None:
    assert post(api, batch_tokens=(1 << 20) + 16) == [["body", "batch_tokens"]]
    assert post(api, batches=65) == [["body", "batches"]]
    assert post(api, ratios=[i / 100 for i in range(65)]) == [["body", "ratios"]]


def test_paths_outside_the_roots_are_refused(api: Api, tmp_path_factory: Any) -> None:
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.jsonl").write_text("{}\n")
    os.symlink(outside, api.root / "escape")
    cases = [
        ({"model": {"path": "/etc"}}, ["body", "model", "path"]),
        ({"model": {"path": "model/../../etc"}}, ["body", "model", "path"]),
        (
            {"finetuning": [{"name": "code", "path": "escape/secret.jsonl"}]},
            ["body", "finetuning", 0, "path"],
        ),
        (
            {"retention": [{"name": "wiki", "path": "data/missing.jsonl"}]},
            ["body", "retention", 0, "path"],
        ),
    ]
    for changes, field in cases:
        assert post(api, **changes) == [field], changes


def test_a_body_over_the_limit_is_413_with_or_without_content_length(api: Api) -> None:
    big = b"x" * (256 * 1024 + 1)
    announced = api.client.post("/v1/sweeps", content=big, headers=api.headers)
    chunked = api.client.post(
        "/v1/sweeps",
        content=iter([big[: len(big) // 2], big[len(big) // 2 :]]),
        headers={**api.headers, "Content-Type": "application/json"},
    )
    assert "content-length" not in chunked.request.headers
    for response in (announced, chunked):
        assert response.status_code == 413
        assert "SHARPMIX_MAX_BODY_BYTES" in response.json()["detail"]


def test_a_bad_cursor_and_limit_are_refused_naming_the_parameter(api: Api) -> None:
    bad_cursor = api.client.get("/v1/sweeps", params={"cursor": "junk"}, headers=api.headers)
    bad_limit = api.client.get("/v1/sweeps", params={"limit": 0}, headers=api.headers)
    assert bad_cursor.status_code == bad_limit.status_code == 422
    assert bad_cursor.json()["detail"][0]["loc"] == ["query", "cursor"]
    assert bad_limit.json()["detail"][0]["loc"] == ["query", "limit"]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"planned_steps": 0}, ["body", "planned_steps"]),
        ({"tolerance": 0}, ["body", "tolerance"]),
        ({"tolerance": -0.1}, ["body", "tolerance"]),
        ({"schedule": {"kind": "step"}}, ["body", "schedule", "kind"]),
        ({"schedule": {"min_lr_ratio": 2}}, ["body", "schedule", "min_lr_ratio"]),
        ({"trajectory": {"steps": 0, "measure_every": 1}}, ["body", "trajectory", "steps"]),
        ({"trajectory": {"steps": 10}}, ["body", "trajectory", "measure_every"]),
        ({"ratios": "automatic"}, ["body", "ratios", "auto"]),
        ({"optimizer": {"name": "sgd", "nesterov": True}}, ["body", "optimizer", "sgd"]),
        ({"optimizer": {"name": "sgd", "dampening": 2}}, ["body", "optimizer", "sgd", "dampening"]),
        ({"optimizer": {"name": "adam", "amsgrad": "x"}}, ["body", "optimizer", "adam", "amsgrad"]),
        ({"optimizer": {"name": "lion"}}, ["body", "optimizer"]),
    ],
)
def test_bad_planned_run_values_are_refused_naming_the_field(
    api: Api, changes: dict[str, Any], field: list[Any]
) -> None:
    assert field in post(api, **changes)


def test_inconsistent_planned_runs_say_what_to_change(api: Api) -> None:
    cases = [
        ({"ratios": "auto"}, "add 'trajectory'"),
        ({"trajectory": {"steps": 10, "measure_every": 20}}, "'measure_every' (20) is above"),
        ({"schedule": {"warmup_steps": 1000}}, "must be below 'planned_steps' (1000)"),
        (
            {
                "ratios": None,
                "ratio_range": {"low": 0, "high": 1, "trials": 3},
                "trajectory": {"steps": 2, "measure_every": 1},
            },
            "runs on listed ratios",
        ),
    ]
    for changes, message in cases:
        response = api.client.post("/v1/sweeps", json=sweep_body(**changes), headers=api.headers)
        assert response.status_code == 422, changes
        assert message in response.text, response.text
    over = api.client.post(
        "/v1/sweeps",
        json=sweep_body(trajectory={"steps": 5001, "measure_every": 100}),
        headers=api.headers,
    )
    assert over.status_code == 422 and "SHARPMIX_MAX_TRAJECTORY_STEPS" in over.text
