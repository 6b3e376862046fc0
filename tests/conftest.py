"""Fixtures shared by every test tier.

Database tests run on the embedded SQLite backend always and on PostgreSQL when
``SHARPMIX_TEST_POSTGRES_URL`` names a server we may create databases on (``make test`` and CI set
it). Each test session creates its own PostgreSQL database and drops it at the end, so runs never
share state.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

POSTGRES_ENV = "SHARPMIX_TEST_POSTGRES_URL"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests skip cleanly where there is no CUDA; unmarked tests join the unit tier."""
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    tiers = {"unit", "db", "gpu", "slow"}
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if not tiers & set(item.keywords):
            item.add_marker(pytest.mark.unit)


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    admin_url = os.environ[POSTGRES_ENV]
    name = f"sharpmix_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _reset_postgres(url: str) -> None:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()


BACKENDS = [
    "sqlite",
    pytest.param(
        "postgresql",
        marks=pytest.mark.skipif(
            not os.environ.get(POSTGRES_ENV),
            reason=f"{POSTGRES_ENV} is not set (make test sets it when PostgreSQL runs)",
        ),
    ),
]


@pytest.fixture(params=BACKENDS)
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of an empty database, once per backend. Later issues reuse it for every db test."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sharpmix.db'}"
    url: str = request.getfixturevalue("postgres_server_url")
    _reset_postgres(url)
    return url


@pytest.fixture
def db_url(empty_db_url: str) -> str:
    """URL of a database migrated to head, once per backend."""
    from service.db.migrate import upgrade

    upgrade(empty_db_url)
    return empty_db_url
