"""price history: overrides in force by the event's timestamp, with tiers and units

Revision ID: 0012_price_history
Revises: 0009_lean_events
Create Date: 2026-11-29 10:00:00

Overrides made before applied to every event received while they existed; they become
overrides in force since 1970, which prices new events exactly as before.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_price_history"
down_revision: str | None = "0009_lean_events"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("price_overrides", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "valid_from",
                sa.DateTime(),
                nullable=False,
                server_default=sa.text("'1970-01-01 00:00:00'"),
            )
        )
        batch_op.add_column(sa.Column("valid_until", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("tiers", sa.JSON(none_as_null=True), nullable=True))
        batch_op.add_column(sa.Column("unit_rates", sa.JSON(none_as_null=True), nullable=True))
        batch_op.drop_constraint("uq_price_overrides_provider_model", type_="unique")
        batch_op.create_unique_constraint(
            "uq_price_overrides_provider_model_valid_from", ["provider", "model", "valid_from"]
        )
    # The default was only for the rows already there: every new one names its own.
    with op.batch_alter_table("price_overrides", schema=None) as batch_op:
        batch_op.alter_column("valid_from", server_default=None)


def downgrade() -> None:
    # Only the newest override of each model survives: the old key allows one.
    op.execute(
        "DELETE FROM price_overrides WHERE id NOT IN "
        "(SELECT max(id) FROM price_overrides GROUP BY provider, model)"
    )
    with op.batch_alter_table("price_overrides", schema=None) as batch_op:
        batch_op.drop_constraint("uq_price_overrides_provider_model_valid_from", type_="unique")
        batch_op.create_unique_constraint(
            "uq_price_overrides_provider_model", ["provider", "model"]
        )
        batch_op.drop_column("unit_rates")
        batch_op.drop_column("tiers")
        batch_op.drop_column("valid_until")
        batch_op.drop_column("valid_from")
