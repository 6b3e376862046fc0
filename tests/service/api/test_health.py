"""Probes and Prometheus metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from service.api.main import create_app
from service.db.migrate import downgrade, head_revision
from tests.service.support import Api, make_settings, sweep_body

pytestmark = pytest.mark.db


def test_health_and_readiness(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    ready = api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "revision": head_revision()}


def test_readyz_is_503_on_an_unmigrated_database(api: Api, db_url: str) -> None:
    api.app.state.engine.dispose()
    downgrade(db_url, "base")
    response = api.client.get("/readyz")
    assert response.status_code == 503
    assert "sharpmix db upgrade" in response.json()["detail"]
    # The other routes say the same, as 503 rather than a server error.
    listing = api.client.get("/v1/sweeps", headers=api.headers)
    assert listing.status_code == 503
    assert "migrated" in listing.json()["detail"]


def samples(api: Api) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_count_requests_by_route_template_and_sweeps_by_state(api: Api) -> None:
    sweep_id = api.submit()["id"]
    api.submit(seed=1)
    api.client.post(f"/v1/sweeps/{sweep_id}/cancel", headers=api.headers)
    api.client.get(f"/v1/sweeps/{sweep_id}", headers=api.headers)
    api.client.get("/v1/sweeps/" + "f" * 32, headers=api.headers)
    api.client.get("/no/such/route")
    seen = samples(api)

    def requests(method: str, route: str, status: str) -> float:
        labels = frozenset({"method": method, "route": route, "status": status}.items())
        return seen.get(("sharpmix_http_requests_total", labels), 0.0)

    assert requests("POST", "/v1/sweeps", "201") == 2
    assert requests("POST", "/v1/sweeps/{sweep_id}/cancel", "200") == 1
    assert requests("GET", "/v1/sweeps/{sweep_id}", "200") == 1
    assert requests("GET", "/v1/sweeps/{sweep_id}", "404") == 1
    assert requests("GET", "unmatched", "404") == 1
    latency = frozenset({"method": "POST", "route": "/v1/sweeps"}.items())
    assert seen[("sharpmix_http_request_duration_seconds_count", latency)] == 2
    assert seen[("sharpmix_database_up", frozenset())] == 1
    assert seen[("sharpmix_sweeps", frozenset({("state", "queued")}))] == 1
    assert seen[("sharpmix_sweeps", frozenset({("state", "cancelled")}))] == 1
    assert seen[("sharpmix_tasks", frozenset({("state", "queued")}))] == 3
    assert seen[("sharpmix_tasks", frozenset({("state", "cancelled")}))] == 3


def test_metrics_answer_while_the_database_is_unmigrated(api: Api, db_url: str) -> None:
    api.app.state.engine.dispose()
    downgrade(db_url, "base")
    assert samples(api)[("sharpmix_database_up", frozenset())] == 0


def test_made_up_methods_cannot_grow_the_metrics(api: Api) -> None:
    api.app.state.metrics.render_seconds = 0.0

    def flood(tag: str) -> int:
        for i in range(100):
            api.client.request(f"{tag}{i}", "/v1/sweeps")
            api.client.request(f"{tag}{i}", f"/no/route/{tag}{i}")
        return api.client.get("/metrics").text.count("\n")

    api.client.get("/metrics")  # the scrape's own series exist from here on
    first = flood("BREW")
    assert flood("MAKEUP") == first  # a hundred new methods, paths: not one new series
    methods = {dict(labels)["method"] for name, labels in samples(api) if "method" in dict(labels)}
    assert methods == {"GET", "other"}, methods


def test_the_metrics_token_protects_metrics_and_leaves_probes_open(db_url: str, root: Path) -> None:
    app = create_app(make_settings(root, db_url, metrics_token="s3cret-token"))
    with TestClient(app) as client:
        refused = client.get("/metrics")
        assert refused.status_code == 401 and "SHARPMIX_METRICS_TOKEN" in refused.json()["detail"]
        wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200 and "sharpmix_database_up" in ok.text
        assert client.get("/healthz").status_code == 200


def _assert_read_only(client: TestClient, headers: dict[str, str]) -> None:
    response = client.get("/readyz")
    assert response.status_code == 503 and "read-only" in response.json()["detail"]
    write = client.post("/v1/sweeps", json=sweep_body(), headers=headers)
    assert write.status_code == 503 and "read-only" in write.json()["detail"]
    assert "migrated" not in write.json()["detail"]


def test_readyz_is_503_on_a_read_only_database(api: Api, db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        # File permissions do not stop root; SQLite's read-only open mode does, for anyone.
        path = make_url(db_url).database
        read_only = make_settings(api.root, f"sqlite:///file:{path}?mode=ro&uri=true")
        with TestClient(create_app(read_only)) as client:
            _assert_read_only(client, api.headers)
        assert api.client.get("/readyz").status_code == 200
        return
    name = make_url(db_url).database
    admin = create_engine(db_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on'))
    try:
        api.app.state.engine.dispose()  # new connections see the setting
        _assert_read_only(api.client, api.headers)
    finally:
        with admin.connect() as connection:
            connection.execute(
                text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = off')
            )
        admin.dispose()
        api.app.state.engine.dispose()
    assert api.client.get("/readyz").status_code == 200
