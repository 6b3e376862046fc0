"""Fixtures of the delivery tests: a webhook receiver and the application with deliveries set up
(the delivery loop driven by the test, pass by pass)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api.main import create_app
from service.db import tenants
from tests.service.notify.receiver import Receiver, serve
from tests.service.support import Api, make_settings

SECRET = "test-signing-key-0123456789abcdef"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A real HTTP server on a free local port that records every POST."""
    got, server = serve()
    try:
        yield got
    finally:
        server.shutdown()
        server.server_close()


ApiFactory = Callable[..., Api]


@pytest.fixture
def hooks_api(db_url: str, root: Path) -> Iterator[ApiFactory]:
    """Build the application with delivery settings (``notify`` off: tests run the passes)."""
    stack: list[TestClient] = []

    def build(**changes: Any) -> Api:
        values: dict[str, Any] = {
            "notify": False,
            "webhook_secret": SECRET,
            "webhook_backoff_seconds": 0.05,
            "webhook_timeout_seconds": 5.0,
        }
        values.update(changes)
        app = create_app(make_settings(root, db_url, **values))
        client = TestClient(app)
        client.__enter__()
        stack.append(client)
        with app.state.session_factory() as session:
            tenant = tenants.create_tenant(session, "acme")
            _, key = tenants.create_api_key(session, tenant.id)
        return Api(app, client, {"Authorization": f"Bearer {key}"}, tenant.id, root)

    try:
        yield build
    finally:
        for client in reversed(stack):
            client.__exit__(None, None, None)
