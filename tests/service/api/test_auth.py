"""Bearer keys: 401 without or with a bad key, and another tenant's sweep is 404 for every verb."""

from __future__ import annotations

import time

import pytest

from service.db import tenants
from tests.service.support import Api, add_measurement, finish

pytestmark = pytest.mark.db

SWEEP_ROUTES = [
    ("GET", "/v1/sweeps/{id}"),
    ("GET", "/v1/sweeps/{id}/trials"),
    ("GET", "/v1/sweeps/{id}/recommendation"),
    ("GET", "/v1/sweeps/{id}/plot.png"),
    ("POST", "/v1/sweeps/{id}/cancel"),
]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer smx_0123456789abcdef_" + "x" * 43},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ],
    ids=["none", "unknown", "malformed", "basic"],
)
def test_requests_without_a_valid_key_get_401(api: Api, headers: dict[str, str]) -> None:
    for method, path in [("GET", "/v1/sweeps"), ("POST", "/v1/sweeps"), *SWEEP_ROUTES]:
        response = api.client.request(method, path.format(id="0" * 32), headers=headers)
        assert response.status_code == 401, (method, path)
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert "Bearer" in response.json()["detail"] or "sharpmix keys" in response.json()["detail"]


def test_a_revoked_key_stops_working_within_the_cache_time(api: Api) -> None:
    api.app.state.key_cache.ttl = 0.5  # SHARPMIX_AUTH_CACHE_SECONDS
    assert api.client.get("/v1/sweeps", headers=api.headers).status_code == 200
    key_id = api.headers["Authorization"].split("_")[1]
    with api.session() as session:
        tenants.revoke_api_key(session, key_id)
    time.sleep(0.6)
    for method, path in [("GET", "/v1/sweeps"), *SWEEP_ROUTES]:
        response = api.client.request(method, path.format(id="0" * 32), headers=api.headers)
        assert response.status_code == 401, (method, path)


def test_without_the_cache_a_revoked_key_stops_at_once(api: Api) -> None:
    api.app.state.key_cache.ttl = 0.0
    assert api.client.get("/v1/sweeps", headers=api.headers).status_code == 200
    key_id = api.headers["Authorization"].split("_")[1]
    with api.session() as session:
        tenants.revoke_api_key(session, key_id)
    assert api.client.get("/v1/sweeps", headers=api.headers).status_code == 401


def test_another_tenants_sweep_is_404_for_every_verb(api: Api) -> None:
    sweep = api.submit()
    add_measurement(api, sweep["id"], 0.0, "web", 1e-2)
    finish(api, sweep["id"])
    other = api.key_for("other")
    for method, path in SWEEP_ROUTES:
        mine = api.client.request(method, path.format(id=sweep["id"]), headers=api.headers)
        theirs = api.client.request(method, path.format(id=sweep["id"]), headers=other)
        missing = api.client.request(method, path.format(id="f" * 32), headers=api.headers)
        assert mine.status_code != 404, (method, path)
        assert (theirs.status_code, missing.status_code) == (404, 404), (method, path)
        assert theirs.json() == {"detail": missing.json()["detail"].replace("f" * 32, sweep["id"])}
    assert api.client.get("/v1/sweeps", headers=other).json()["items"] == []
