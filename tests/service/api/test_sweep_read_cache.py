"""The polling read kept in the API process until PostgreSQL announces a change of the sweep.

Each test changes a sweep row behind the API's back (another connection, as a worker would) and
polls until the API shows it. That the answer is really kept, rather than read again, is shown
the same way: with the change notices switched off (the trigger disabled), a change stays
unseen."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from service.api.main import create_app
from service.db import tenants
from service.db.reads import LISTENER_NAME, LIVE_SECONDS
from tests.conftest import POSTGRES_ENV
from tests.service.support import Api, make_settings

pytestmark = [
    pytest.mark.db,
    pytest.mark.skipif(not os.environ.get(POSTGRES_ENV), reason=f"{POSTGRES_ENV} is not set"),
]


@pytest.fixture
def db_url(postgres_server_url: str) -> str:
    """PostgreSQL only: SQLite has no change notices and no read cache."""
    from service.db.migrate import upgrade
    from tests.conftest import _reset_postgres

    _reset_postgres(postgres_server_url)
    upgrade(postgres_server_url)
    return postgres_server_url


@pytest.fixture
def cached(db_url: str, root: Path) -> Iterator[Api]:
    app = create_app(make_settings(root, db_url, sweep_read_cache=True))
    with TestClient(app) as client:
        with app.state.session_factory() as session:
            tenant = tenants.create_tenant(session, "acme")
            _, key = tenants.create_api_key(session, tenant.id)
        api = Api(app, client, {"Authorization": f"Bearer {key}"}, tenant.id, root)
        _wait_for(lambda: _listening(api), "the change listener to start")
        yield api


@pytest.fixture
def other(db_url: str) -> Iterator[Engine]:
    """A connection of another process: a worker's writes, an operator's switches."""
    engine = create_engine(db_url, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


def _listening(api: Api) -> bool:
    with api.session() as session:
        found = session.execute(
            text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"),
            {"name": LISTENER_NAME},
        ).scalar_one()
    return bool(found)


def _wait_for(check, what: str, seconds: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _error(api: Api, sweep_id: str) -> str | None:
    response = api.client.get(f"/v1/sweeps/{sweep_id}", headers=api.headers)
    assert response.status_code == 200, response.text
    error: str | None = response.json()["error"]
    return error


def _set_error(engine: Engine, sweep_id: str, error: str) -> None:
    with engine.connect() as connection:
        connection.execute(
            text("UPDATE sweeps SET error = :error WHERE id = :id"),
            {"error": error, "id": sweep_id},
        )


def test_a_change_by_another_connection_is_seen_and_the_answer_is_kept_until_then(
    cached: Api, other: Engine
) -> None:
    sweep_id = cached.submit()["id"]
    assert _error(cached, sweep_id) is None
    _set_error(other, sweep_id, "first")
    _wait_for(lambda: _error(cached, sweep_id) == "first", "the first change")

    # Without the notice the API keeps answering what it read: the answer is really kept.
    with other.connect() as connection:
        connection.execute(text("ALTER TABLE sweeps DISABLE TRIGGER sweeps_changed"))
    try:
        _set_error(other, sweep_id, "unannounced")
        time.sleep(0.3)
        assert _error(cached, sweep_id) == "first"
    finally:
        with other.connect() as connection:
            connection.execute(text("ALTER TABLE sweeps ENABLE TRIGGER sweeps_changed"))
    _set_error(other, sweep_id, "announced")
    _wait_for(lambda: _error(cached, sweep_id) == "announced", "the announced change")


def test_the_process_own_cancel_is_seen_by_the_next_poll(cached: Api) -> None:
    sweep_id = cached.submit()["id"]
    assert (
        cached.client.get(f"/v1/sweeps/{sweep_id}", headers=cached.headers).json()["state"]
        == "queued"
    )
    assert cached.client.post(f"/v1/sweeps/{sweep_id}/cancel", headers=cached.headers).is_success
    polled = cached.client.get(f"/v1/sweeps/{sweep_id}", headers=cached.headers).json()
    assert polled["state"] == "cancelled"


def test_another_tenant_is_never_answered_from_what_is_kept(cached: Api) -> None:
    sweep_id = cached.submit()["id"]
    assert _error(cached, sweep_id) is None  # kept now
    stranger = cached.key_for("globex")
    response = cached.client.get(f"/v1/sweeps/{sweep_id}", headers=stranger)
    assert response.status_code == 404


def test_a_lost_listener_stops_the_keeping_until_it_is_back(cached: Api, other: Engine) -> None:
    sweep_id = cached.submit()["id"]
    assert _error(cached, sweep_id) is None  # kept now
    with other.connect() as connection:
        connection.execute(text("ALTER TABLE sweeps DISABLE TRIGGER sweeps_changed"))
    try:
        _set_error(other, sweep_id, "unannounced")
        with other.connect() as connection:
            killed = connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = :name"
                ),
                {"name": LISTENER_NAME},
            ).all()
        assert killed == [(True,)]
        # Within a ping of the loss nothing kept is served; the read goes to the database.
        _wait_for(
            lambda: _error(cached, sweep_id) == "unannounced",
            "reads to bypass the lost listener",
            seconds=LIVE_SECONDS + 2,
        )
        _wait_for(lambda: _listening(cached), "the listener to come back")
    finally:
        with other.connect() as connection:
            connection.execute(text("ALTER TABLE sweeps ENABLE TRIGGER sweeps_changed"))
    _set_error(other, sweep_id, "after")
    _wait_for(lambda: _error(cached, sweep_id) == "after", "a change after the reconnect")


def test_polls_that_miss_together_share_one_read(cached: Api, db_url: str) -> None:
    sweep_id = cached.submit()["id"]
    assert _error(cached, sweep_id) is None
    reader = cached.app.state.sweep_reader
    reads = []
    real_read = reader.read

    async def counted(tenant_id: int, wanted: str):  # type: ignore[no-untyped-def]
        reads.append(wanted)
        return await real_read(tenant_id, wanted)

    reader.read = counted
    # Hold the table so that the read after the change waits, and every poll meanwhile misses.
    holder = create_engine(db_url)
    with holder.connect() as connection:
        connection.execute(text("LOCK TABLE sweeps IN ACCESS EXCLUSIVE MODE"))
        reader.forget(sweep_id)
        with ThreadPoolExecutor(max_workers=20) as pool:
            polls = [pool.submit(_error, cached, sweep_id) for _ in range(20)]
            time.sleep(0.5)
            assert not any(poll.done() for poll in polls)
            connection.commit()  # releases the lock
            assert [poll.result() for poll in polls] == [None] * 20
    holder.dispose()
    assert reads == [sweep_id]
