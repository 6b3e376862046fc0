"""A database that stops answering: the API answers 503 with Retry-After within its limits, and
liveness and metrics keep answering while requests wait. The hang is real: the server talks to
PostgreSQL through a TCP proxy that this test stops forwarding, as a stopped database host or a
dropped network path would (connections stay open, nothing comes back)."""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy.engine import make_url

from service.api.main import create_app
from service.db import tenants
from service.db.engine import make_engine, make_session_factory
from service.db.migrate import upgrade
from tests.conftest import POSTGRES_ENV
from tests.service.support import make_settings

pytestmark = [
    pytest.mark.db,
    pytest.mark.skipif(not os.environ.get(POSTGRES_ENV), reason=f"{POSTGRES_ENV} is not set"),
]


class StallingProxy:
    """Forwards TCP to ``upstream`` until `stall`; then holds every byte until `resume`."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.flowing = threading.Event()
        self.flowing.set()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def stall(self) -> None:
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()

    def close(self) -> None:
        self.closed = True
        self.flowing.set()
        self.listener.close()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        peers = {client: server, server: client}
        try:
            while not self.closed:
                self.flowing.wait()
                readable, _, _ = select.select(list(peers), [], [], 0.05)
                for sock in readable:
                    if not self.flowing.is_set():
                        break  # a stall began: the bytes stay unread in the kernel
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except OSError:
            return
        finally:
            client.close()
            server.close()


@pytest.fixture
def proxy(postgres_server_url: str) -> Iterator[StallingProxy]:
    url = make_url(postgres_server_url)
    handle = StallingProxy((url.host or "127.0.0.1", url.port or 5432))
    yield handle
    handle.close()


def test_a_hung_database_gives_503s_in_bounded_time_and_probes_keep_answering(
    postgres_server_url: str, proxy: StallingProxy, tmp_path: Path
) -> None:
    from tests.conftest import _reset_postgres

    _reset_postgres(postgres_server_url)
    upgrade(postgres_server_url)
    direct = make_engine(postgres_server_url)
    with make_session_factory(direct)() as session:
        tenant = tenants.create_tenant(session, "acme")
        _, key = tenants.create_api_key(session, tenant.id)
    direct.dispose()
    through_proxy = (
        make_url(postgres_server_url)
        .set(host="127.0.0.1", port=proxy.port)
        .render_as_string(hide_password=False)
    )
    settings = make_settings(
        tmp_path,
        through_proxy,
        database_connect_timeout=1,
        database_statement_timeout=2,
        database_pool_timeout=1,
        sweep_read_cache=True,  # what is kept must not answer for a database that hangs
    )
    app = create_app(settings)
    app.state.metrics.refresh_seconds = 0.0  # read the store at every scrape
    app.state.metrics.render_seconds = 0.0
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    auth = {"Authorization": f"Bearer {key}"}
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            # Healthy first, and the key check is cached.
            listing = client.get("/v1/sweeps", headers=auth)
            assert listing.status_code == 200
            sweep = "f" * 32
            assert client.get(f"/v1/sweeps/{sweep}", headers=auth).status_code == 404
            assert client.get("/readyz").status_code == 200

            proxy.stall()
            paths = [f"/v1/sweeps/{sweep}", "/v1/sweeps", f"/v1/sweeps/{sweep}/trials"] * 10

            def call(path: str) -> tuple[int, str | None, float]:
                started = time.monotonic()
                with httpx.Client(base_url=base, timeout=30) as own:
                    response = own.get(path, headers=auth)
                return (
                    response.status_code,
                    response.headers.get("retry-after"),
                    time.monotonic() - started,
                )

            with ThreadPoolExecutor(max_workers=30) as pool:
                pending = [pool.submit(call, path) for path in paths]
                time.sleep(0.5)  # the requests are now waiting on the database
                started = time.monotonic()
                assert client.get("/healthz").status_code == 200
                assert time.monotonic() - started < 1.0
                started = time.monotonic()
                scrape = client.get("/metrics")
                assert scrape.status_code == 200
                assert time.monotonic() - started < 3.0
                assert "sharpmix_database_up 0.0" in scrape.text
                ready = client.get("/readyz")
                assert ready.status_code == 503 and ready.headers.get("retry-after")
                results = [future.result() for future in pending]
            statuses = sorted({status for status, _, _ in results})
            assert statuses == [503], results
            assert all(retry is not None for _, retry, _ in results)
            # Each waited at most its limits: pool, connect and one cut-off statement, twice.
            assert max(elapsed for _, _, elapsed in results) < 15, results

            proxy.resume()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if client.get("/v1/sweeps", headers=auth).status_code == 200:
                    break
                time.sleep(0.2)
            assert client.get("/v1/sweeps", headers=auth).status_code == 200
            assert client.get(f"/v1/sweeps/{sweep}", headers=auth).status_code == 404
            assert client.get("/readyz").status_code == 200
    finally:
        proxy.resume()
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
