"""Migrations: up, down, up again on both backends, and no drift between migrations and models."""

from __future__ import annotations

from datetime import datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from service.db.migrate import (
    VERSION_TABLE,
    current_revision,
    downgrade,
    head_revision,
    include_object,
    upgrade,
)
from service.db.models import Base

pytestmark = pytest.mark.db

OUR_TABLES = set(Base.metadata.tables)


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(empty_db_url: str) -> None:
    upgrade(empty_db_url)
    assert current_revision(empty_db_url) == head_revision()
    assert _tables(empty_db_url) >= OUR_TABLES
    assert VERSION_TABLE in _tables(empty_db_url)
    # Optuna owns this name in the shared database.
    assert "alembic_version" not in _tables(empty_db_url)

    downgrade(empty_db_url, "base")
    assert current_revision(empty_db_url) is None
    assert not (OUR_TABLES & _tables(empty_db_url))

    upgrade(empty_db_url)
    assert current_revision(empty_db_url) == head_revision()


def test_migrated_schema_matches_models(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection,
                opts={
                    "compare_type": True,
                    "include_object": include_object,
                    "version_table": VERSION_TABLE,
                },
            )
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert diff == [], f"models and migrations disagree; add a migration: {diff}"


def test_optuna_tables_are_left_alone(db_url: str) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(study_name="coexist", storage=db_url)
    tables = _tables(db_url)
    assert {"studies", "trials", "alembic_version"} <= tables
    # Our migrations neither see nor drop Optuna's tables.
    downgrade(db_url, "base")
    upgrade(db_url)
    assert {"studies", "trials", "alembic_version"} <= _tables(db_url)
    assert optuna.load_study(study_name="coexist", storage=db_url).study_name == "coexist"


def _run(url: str, *statements: str) -> list[tuple[object, ...]]:
    """Run SQL statements in one transaction; the rows of the last one."""
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            rows = [connection.execute(text(statement)) for statement in statements][-1]
            return [tuple(row) for row in rows] if rows.returns_rows else []
    finally:
        engine.dispose()


NOW = datetime(2026, 12, 1).isoformat(sep=" ")
SWEEP = (
    "INSERT INTO sweeps (id, tenant_id, state, spec, spec_sha256, study_name, tasks_total, "
    "tasks_done, forwards, backwards, compute_seconds, cancel_requested, created_at, updated_at) "
    f"VALUES ('s1', 1, 'succeeded', '{{}}', 'x', 'study', 1, 1, 0, 0, 0.0, false, '{NOW}', '{NOW}')"
)


def _delivery(row_id: str, channel: str, edition: int | None = None) -> str:
    columns = "id, sweep_id, channel, event, target, state, attempts, next_attempt_at, "
    columns += "attempts_log, created_at, updated_at"
    values = f"'{row_id}', 's1', '{channel}', 'sweep.succeeded', 'http://h/x', 'delivered', 1, "
    values += f"'{NOW}', '[]', '{NOW}', '{NOW}'"
    if edition is not None:
        columns, values = f"{columns}, edition", f"{values}, {edition}"
    return f"INSERT INTO sweep_deliveries ({columns}) VALUES ({values})"


def test_editions_of_stored_sweeps_and_deliveries(empty_db_url: str) -> None:
    """0008: rows stored before it are of edition 1; the outbox's key takes the edition; going
    back keeps each (sweep, channel)'s newest delivery."""
    upgrade(empty_db_url, "0007")
    _run(
        empty_db_url,
        f"INSERT INTO tenants (id, name, created_at) VALUES (1, 'acme', '{NOW}')",
        SWEEP,
        _delivery("d1", "webhook"),
        _delivery("d2", "mlflow"),
    )
    upgrade(empty_db_url, "0008")
    assert _run(empty_db_url, "SELECT edition FROM sweeps") == [(1,)]
    query = "SELECT id, edition FROM sweep_deliveries ORDER BY id"
    assert _run(empty_db_url, query) == [("d1", 1), ("d2", 1)]

    # The next edition gets its own row; the same edition twice is refused.
    _run(empty_db_url, "UPDATE sweeps SET edition = 2", _delivery("d3", "webhook", 2))
    with pytest.raises(IntegrityError):
        _run(empty_db_url, _delivery("d4", "webhook", 2))

    downgrade(empty_db_url, "0007")
    assert _run(empty_db_url, "SELECT id FROM sweep_deliveries ORDER BY id") == [("d2",), ("d3",)]
    with pytest.raises(IntegrityError):
        _run(empty_db_url, _delivery("d5", "webhook"))
    upgrade(empty_db_url)
    assert _run(empty_db_url, query) == [("d2", 1), ("d3", 1)]
