"""override no overlap: PostgreSQL refuses two overrides of a model in force at once

Revision ID: 0014_override_no_overlap
Revises: 0013_failed_refreshes
Create Date: 2026-12-02 03:00:00

The service checks the no-overlap rule under a lock per model (pricing/overrides.py);
this exclusion constraint makes the database hold it too, for any writer. It needs the
btree_gist extension (PostgreSQL's contrib; trusted, so a database owner may create it).
SQLite has one writer, which already applies the rule one change at a time.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014_override_no_overlap"
down_revision: str | None = "0013_failed_refreshes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
    # [valid_from, valid_until): an open end (NULL) is unbounded.
    op.execute(
        "ALTER TABLE price_overrides ADD CONSTRAINT ex_price_overrides_no_overlap "
        "EXCLUDE USING gist (provider WITH =, model WITH =, "
        "tsrange(valid_from, valid_until, '[)') WITH &&)"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE price_overrides DROP CONSTRAINT ex_price_overrides_no_overlap")
