"""A rate grid in a submission (issue 11, part 2): 422 naming the field, and the limit."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.api.main import create_app
from tests.service.support import Api, make_settings, sweep_body

pytestmark = pytest.mark.db


def test_a_grid_is_stored_with_the_sweep(api: Api) -> None:
    body = api.submit(learning_rates=[1e-4, 3e-3])
    assert body["spec"]["learning_rates"] == [1e-4, 3e-3]


@pytest.mark.parametrize(
    ("grid", "message"),
    [([3e-3, 1e-4], "strictly ascending"), ([0.0], "greater than 0"), ([], "at least 1")],
)
def test_a_bad_grid_is_422_naming_it(api: Api, grid: list[float], message: str) -> None:
    response = api.client.post(
        "/v1/sweeps", json=sweep_body(learning_rates=grid), headers=api.headers
    )
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"][:2] == ["body", "learning_rates"] and message in detail["msg"]


def test_a_grid_above_the_limit_is_422_naming_the_setting(api: Api, db_url: str) -> None:
    app = create_app(make_settings(api.root, db_url, max_learning_rates=2))
    with TestClient(app) as client:
        response = client.post(
            "/v1/sweeps", json=sweep_body(learning_rates=[1e-4, 3e-3]), headers=api.headers
        )
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "learning_rates"]
    assert "SHARPMIX_MAX_LEARNING_RATES" in detail["msg"]
