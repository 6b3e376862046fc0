"""Alembic migrations of sharpmix's own tables (see service/db/migrate.py)."""
