"""a notice on every change of a sweep row, so API processes can keep its polling read in memory

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05

PostgreSQL only: after each UPDATE or DELETE of a row of ``sweeps`` the trigger sends
``NOTIFY sharpmix_sweeps, '<sweep id>'``. A notice is sent when the writing transaction commits
and not at all when it rolls back. The API's polling read (``service.db.reads``) listens on that
channel and forgets what it kept of a sweep when its notice arrives. SQLite has no such channel
and no cache, so nothing is created there.
"""

from __future__ import annotations

from alembic import op


revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

CHANNEL = "sharpmix_sweeps"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        CREATE FUNCTION sharpmix_sweep_changed() RETURNS trigger AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                PERFORM pg_notify('{CHANNEL}', OLD.id);
            ELSE
                PERFORM pg_notify('{CHANNEL}', NEW.id);
            END IF;
            RETURN NULL;
        END
        $$ LANGUAGE plpgsql
        """
    )
    op.execute(
        "CREATE TRIGGER sweeps_changed AFTER UPDATE OR DELETE ON sweeps "
        "FOR EACH ROW EXECUTE FUNCTION sharpmix_sweep_changed()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS sweeps_changed ON sweeps")
    op.execute("DROP FUNCTION IF EXISTS sharpmix_sweep_changed()")
