"""provider usage objects and partially priced events

Revision ID: 0010_provider_usage
Revises: 0001
Create Date: 2026-11-29 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_provider_usage"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD_WHERE = "pricing = 'unpriced'"
_NEW_WHERE = "pricing IN ('unpriced', 'partially_priced')"


def upgrade() -> None:
    # Plain ADD COLUMN on both databases (nullable, no default): no table rewrite.
    op.add_column("usage_events", sa.Column("usage_object", sa.JSON(), nullable=True))
    op.add_column("usage_events", sa.Column("unpriced_units", sa.Text(), nullable=True))
    op.drop_index("ix_usage_events_unpriced", table_name="usage_events")
    op.create_index(
        "ix_usage_events_unpriced",
        "usage_events",
        ["provider", "model"],
        unique=False,
        sqlite_where=sa.text(_NEW_WHERE),
        postgresql_where=sa.text(_NEW_WHERE),
    )


def downgrade() -> None:
    op.drop_index("ix_usage_events_unpriced", table_name="usage_events")
    op.create_index(
        "ix_usage_events_unpriced",
        "usage_events",
        ["provider", "model"],
        unique=False,
        sqlite_where=sa.text(_OLD_WHERE),
        postgresql_where=sa.text(_OLD_WHERE),
    )
    with op.batch_alter_table("usage_events", schema=None) as batch_op:
        batch_op.drop_column("unpriced_units")
        batch_op.drop_column("usage_object")
