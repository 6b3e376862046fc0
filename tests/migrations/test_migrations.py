"""Migrations: up, down, up again on both backends, and no drift between migrations and models."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

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
