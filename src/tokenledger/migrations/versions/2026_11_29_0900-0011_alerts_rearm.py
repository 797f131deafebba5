"""alerts re-arm: the once-only key holds for armed alerts only

Revision ID: 0011_alerts_rearm
Revises: 0010_provider_usage
Create Date: 2026-11-29 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_alerts_rearm"
down_revision: str | None = "0010_provider_usage"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ARMED = sa.text("rearmed_at IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rearmed_at", sa.DateTime(), nullable=True))
        batch_op.drop_constraint("uq_alerts_license_id_type_period", type_="unique")
        batch_op.create_index(
            "uq_alerts_armed",
            ["license_id", "type", "period"],
            unique=True,
            sqlite_where=ARMED,
            postgresql_where=ARMED,
        )


def downgrade() -> None:
    # Re-armed alerts would break the plain unique key: only the armed ones are kept.
    op.execute(
        "DELETE FROM webhook_deliveries WHERE alert_id IN "
        "(SELECT id FROM alerts WHERE rearmed_at IS NOT NULL)"
    )
    op.execute("DELETE FROM alerts WHERE rearmed_at IS NOT NULL")
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_index("uq_alerts_armed", sqlite_where=ARMED, postgresql_where=ARMED)
        batch_op.create_unique_constraint(
            "uq_alerts_license_id_type_period", ["license_id", "type", "period"]
        )
        batch_op.drop_column("rearmed_at")
