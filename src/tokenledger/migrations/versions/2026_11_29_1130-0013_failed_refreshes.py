"""failed refreshes: an index of each organization's failed runs

Revision ID: 0013_failed_refreshes
Revises: 0012_price_history
Create Date: 2026-11-29 11:30:00

The monthly route counts an organization's failed runs per month; without this index it
read every run the organization ever had.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013_failed_refreshes"
down_revision: str | None = "0012_price_history"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_refreshes_failed",
        "refreshes",
        ["organization_id"],
        sqlite_where=sa.text("status = 'failed'"),
        postgresql_where=sa.text("status = 'failed'"),
    )


def downgrade() -> None:
    op.drop_index("ix_refreshes_failed", table_name="refreshes")
