"""Alembic environment: our tables only, our own version table."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import create_engine

from service.db.migrate import VERSION_TABLE, include_object
from service.db.models import Base

target_metadata = Base.metadata


def _options() -> dict[str, Any]:
    return {
        "target_metadata": target_metadata,
        "version_table": VERSION_TABLE,
        "include_object": include_object,
        "compare_type": True,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        "render_as_batch": True,
    }


def run_offline() -> None:
    context.configure(url=context.config.get_main_option("sqlalchemy.url"), **_options())
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    assert url is not None
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, **_options())
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
