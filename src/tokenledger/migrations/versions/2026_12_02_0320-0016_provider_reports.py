"""provider reports: imported usage and cost reports, provider accounts, provider.drift

Revision ID: 0016_provider_reports
Revises: 0015_portal_generations
Create Date: 2026-12-02 03:00:00

A provider.drift alert belongs to a provider's day, not to an organization or a license:
both columns of alerts become nullable (the once-per-license index is unchanged; the
once-per-day rule of provider.drift is provider_drift_alerts' key).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016_provider_reports"
down_revision: str | None = "0015_portal_generations"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ARMED = sa.text("rearmed_at IS NULL")
BIG_ID = sa.BigInteger().with_variant(sa.INTEGER(), "sqlite")
TOKENS = (
    "uncached_input_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "cache_read_tokens",
    "output_tokens",
    "web_search_requests",
    "requests",
    "cost_nano",
)


def _figures() -> list[sa.Column[int]]:
    return [sa.Column(name, sa.BigInteger(), nullable=False) for name in TOKENS]


def upgrade() -> None:
    op.create_table(
        "provider_syncs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("first_day", sa.String(length=10), nullable=False),
        sa.Column("last_day", sa.String(length=10), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=320), nullable=False),
        sa.Column("row_count", sa.BigInteger(), nullable=False),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_syncs")),
    )
    op.create_table(
        "provider_report_rows",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("sync_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("api_key_id", sa.String(length=128), nullable=False),
        sa.Column("workspace_id", sa.String(length=128), nullable=False),
        *_figures(),
        sa.ForeignKeyConstraint(
            ["sync_id"],
            ["provider_syncs.id"],
            name=op.f("fk_provider_report_rows_sync_id_provider_syncs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_report_rows")),
        sa.UniqueConstraint(
            "sync_id", "day", "model", "api_key_id", "workspace_id", name="uq_provider_report_rows"
        ),
    )
    op.create_index(
        "ix_provider_report_rows_key", "provider_report_rows", ["api_key_id", "day"], unique=False
    )
    op.create_index(
        "ix_provider_report_rows_workspace",
        "provider_report_rows",
        ["workspace_id", "day"],
        unique=False,
    )
    op.create_table(
        "provider_report_totals",
        sa.Column("sync_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        *_figures(),
        sa.ForeignKeyConstraint(
            ["sync_id"],
            ["provider_syncs.id"],
            name=op.f("fk_provider_report_totals_sync_id_provider_syncs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("sync_id", "day", "model", name=op.f("pk_provider_report_totals")),
    )
    op.create_table(
        "provider_report_days",
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("sync_id", sa.Integer(), nullable=False),
        sa.Column("partial", sa.Boolean(), nullable=False),
        sa.Column("synced_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["sync_id"],
            ["provider_syncs.id"],
            name=op.f("fk_provider_report_days_sync_id_provider_syncs"),
        ),
        sa.PrimaryKeyConstraint("provider", "day", name=op.f("pk_provider_report_days")),
    )
    op.create_index(
        op.f("ix_provider_report_days_sync_id"), "provider_report_days", ["sync_id"], unique=False
    )
    op.create_table(
        "provider_accounts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("external_id", sa.String(length=128), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=True),
        sa.Column("first_seen_day", sa.String(length=10), nullable=True),
        sa.Column("last_seen_day", sa.String(length=10), nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_provider_accounts_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_accounts")),
        sa.UniqueConstraint(
            "provider",
            "kind",
            "external_id",
            name=op.f("uq_provider_accounts_provider_kind_external_id"),
        ),
    )
    op.create_index(
        op.f("ix_provider_accounts_organization_id"),
        "provider_accounts",
        ["organization_id"],
        unique=False,
    )
    op.create_table(
        "provider_drift_alerts",
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("alert_id", BIG_ID, nullable=False),
        sa.ForeignKeyConstraint(
            ["alert_id"], ["alerts.id"], name=op.f("fk_provider_drift_alerts_alert_id_alerts")
        ),
        sa.PrimaryKeyConstraint("provider", "day", name=op.f("pk_provider_drift_alerts")),
    )
    op.create_table(
        "provider_sync_leases",
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("locked_until", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("provider", name=op.f("pk_provider_sync_leases")),
    )
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.alter_column("organization_id", existing_type=sa.Integer(), nullable=True)
        batch_op.alter_column("license_id", existing_type=sa.Integer(), nullable=True)


def downgrade() -> None:
    op.execute(
        "DELETE FROM webhook_deliveries WHERE alert_id IN "
        "(SELECT id FROM alerts WHERE license_id IS NULL)"
    )
    op.drop_table("provider_drift_alerts")
    op.execute("DELETE FROM alerts WHERE license_id IS NULL OR organization_id IS NULL")
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.alter_column("license_id", existing_type=sa.Integer(), nullable=False)
        batch_op.alter_column("organization_id", existing_type=sa.Integer(), nullable=False)
    op.drop_table("provider_sync_leases")
    op.drop_index(op.f("ix_provider_accounts_organization_id"), table_name="provider_accounts")
    op.drop_table("provider_accounts")
    op.drop_index(op.f("ix_provider_report_days_sync_id"), table_name="provider_report_days")
    op.drop_table("provider_report_days")
    op.drop_table("provider_report_totals")
    op.drop_index("ix_provider_report_rows_workspace", table_name="provider_report_rows")
    op.drop_index("ix_provider_report_rows_key", table_name="provider_report_rows")
    op.drop_table("provider_report_rows")
    op.drop_table("provider_syncs")
