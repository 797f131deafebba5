"""utc day rollups: the ledger's sums per organization, UTC day, provider and model

Revision ID: 0018_utc_day_rollups
Revises: 0017_gateway_holds
Create Date: 2026-12-02 07:00:00

What the comparison with the providers' reports reads instead of the events: built here
from the events already stored, then kept by every write with its events.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018_utc_day_rollups"
down_revision: str | None = "0017_gateway_holds"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FIELDS = (
    "uncached_input_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "cache_read_tokens",
    "output_tokens",
    "cost_nano",
    "event_count",
    "unpriced_events",
)
# Each field as a sum over events (e) joined with their price rows (p).
SUMS = (
    "sum(e.input_tokens)",
    "sum(e.cache_creation_input_tokens - e.cache_write_1h_tokens)",
    "sum(e.cache_write_1h_tokens)",
    "sum(e.cache_read_input_tokens)",
    "sum(e.output_tokens)",
    "sum(coalesce(e.cost_nano, 0))",
    "count(*)",
    "sum(CASE WHEN p.pricing IN ('unpriced', 'partially_priced') THEN 1 ELSE 0 END)",
)
# The UTC day of an event: SQLite keeps instants as integers of microseconds, PostgreSQL as
# naive UTC timestamps.
UTC_DAY = {
    "sqlite": "date(e.timestamp / 1000000, 'unixepoch')",
    "postgresql": "to_char(e.timestamp, 'YYYY-MM-DD')",
}


def upgrade() -> None:
    op.create_table(
        "usage_utc_daily",
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in FIELDS),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_usage_utc_daily_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint(
            "organization_id", "day", "provider", "model", name=op.f("pk_usage_utc_daily")
        ),
    )
    op.create_index(
        "ix_usage_utc_daily_provider_day", "usage_utc_daily", ["provider", "day"], unique=False
    )
    day = UTC_DAY[op.get_bind().dialect.name]
    op.execute(
        f"INSERT INTO usage_utc_daily (organization_id, day, provider, model, {', '.join(FIELDS)}) "
        f"SELECT e.organization_id, {day}, p.provider, p.model, {', '.join(SUMS)} "
        "FROM usage_events AS e JOIN usage_prices AS p ON p.id = e.price_id "
        f"GROUP BY e.organization_id, {day}, p.provider, p.model"
    )


def downgrade() -> None:
    op.drop_index("ix_usage_utc_daily_provider_day", table_name="usage_utc_daily")
    op.drop_table("usage_utc_daily")
