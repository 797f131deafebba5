"""gateway holds: the kind, provider and model of a reservation

Revision ID: 0017_gateway_holds
Revises: 0016_provider_reports
Create Date: 2026-12-02 03:00:00

A gateway call holds its upper bound before it is forwarded; a hold its process never
settled (the process was killed mid-call) is listed as an interrupted call, with its model.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017_gateway_holds"
down_revision: str | None = "0016_provider_reports"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("reservations") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=True))
        batch.add_column(sa.Column("provider", sa.String(64), nullable=True))
        batch.add_column(sa.Column("model", sa.String(128), nullable=True))
    op.create_index(
        "ix_reservations_gateway_held",
        "reservations",
        ["created_at"],
        sqlite_where=sa.text("status = 'held' AND kind = 'gateway'"),
        postgresql_where=sa.text("status = 'held' AND kind = 'gateway'"),
    )


def downgrade() -> None:
    op.drop_index("ix_reservations_gateway_held", table_name="reservations")
    with op.batch_alter_table("reservations") as batch:
        batch.drop_column("model")
        batch.drop_column("provider")
        batch.drop_column("kind")
