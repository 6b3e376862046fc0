"""Readiness: the database answers, is migrated to this server's revision, and takes writes."""

from __future__ import annotations

import os

from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, text

from service.db._errors import database_errors
from service.db.migrate import VERSION_TABLE, head_revision


def readiness_problem(engine: Engine) -> tuple[str | None, str | None]:
    """What keeps the database from serving this server, if anything.

    Returns:
        ``(revision, problem)``: the database's revision, and None when it is ready or a
        sentence saying what to do.

    Raises:
        DatabaseError: when the database cannot be reached (with what to check).
    """
    with database_errors("check the database"), engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        current = context.get_current_revision()
        read_only = False
        if engine.dialect.name == "postgresql":
            in_recovery, setting = connection.execute(
                text("SELECT pg_is_in_recovery(), current_setting('transaction_read_only')")
            ).one()
            read_only = bool(in_recovery) or setting == "on"
        elif engine.dialect.name == "sqlite":
            database = engine.url.database
            if database and database != ":memory:":
                # WAL writes beside the file, so its directory must be writable too.
                directory = os.path.dirname(os.path.abspath(database))
                read_only = not (os.access(database, os.W_OK) and os.access(directory, os.W_OK))
        connection.rollback()
    head = head_revision()
    if current is None or current != head:
        return current, (
            f"database at revision {current}, this server needs {head}: run `sharpmix db upgrade`"
        )
    if read_only:
        return current, (
            "the database is read-only (a replica, or a read-only file or file system): point "
            "SHARPMIX_DATABASE_URL at a writable primary, or make the file writable"
        )
    return current, None
