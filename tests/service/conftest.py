"""Fixtures of the service tests: the application on each database backend with a key of tenant
``acme``, the allowed root holding the files ``sweep_body`` names, and a real uvicorn server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient

from service.api.main import create_app
from service.db import tenants
from tests.service.support import Api, make_settings, write_model_dir


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The allowed root, holding the model directory and data files ``sweep_body`` names."""
    write_model_dir(tmp_path / "model")
    (tmp_path / "data").mkdir()
    for name in ("web", "code"):
        (tmp_path / "data" / f"{name}.jsonl").write_text('{"text": "hello"}\n')
    return tmp_path


@pytest.fixture
def api(db_url: str, root: Path) -> Iterator[Api]:
    """The application on each backend, started (lifespan run) and with tenant ``acme``."""
    app = create_app(make_settings(root, db_url))
    with TestClient(app) as client:
        with app.state.session_factory() as session:
            tenant = tenants.create_tenant(session, "acme")
            _, key = tenants.create_api_key(session, tenant.id)
        yield Api(app, client, {"Authorization": f"Bearer {key}"}, tenant.id, root)


@pytest.fixture
def live_url(api: Api) -> Iterator[str]:
    """The same application served by uvicorn on a free local port, in a thread."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(api.app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped while starting"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()
        sock.close()
