"""lean usage events: prices stored once, digest as bytes, integer instants on SQLite

Every event kept its provider, model, pricing status, price source, version, priced
model and rates (a JSON object) in its own row. They move to usage_prices, one row per
distinct price, which the event references by id; the content digest becomes 32 bytes
instead of 64 hex characters; on SQLite the two instants become integers of microseconds
since 1970 (PostgreSQL keeps its 8-byte timestamps); the index on license_id, which no
read uses, goes. Existing rows are converted, not lost.

Revision ID: 0009_lean_events
Revises: 0011_alerts_rearm
Create Date: 2026-11-29 09:00:00
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0009_lean_events"
down_revision: str | None = "0011_alerts_rearm"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PRICE_FIELDS = (
    "provider",
    "model",
    "pricing",
    "price_source",
    "price_version",
    "priced_model",
)
BigId = sa.BigInteger().with_variant(sa.INTEGER(), "sqlite")


def fingerprint(fields: Sequence[Any], rates: dict[str, Any] | None) -> str:
    """ledger.prices.price_fingerprint, as of this revision (the stored identity of a price)."""
    canonical = json.dumps([*fields, rates], sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def upgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    op.create_table(
        "usage_prices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("pricing", sa.String(length=16), nullable=False),
        sa.Column("price_source", sa.String(length=64), nullable=True),
        sa.Column("price_version", sa.String(length=128), nullable=True),
        sa.Column("priced_model", sa.String(length=128), nullable=True),
        sa.Column("rates", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_prices")),
        sa.UniqueConstraint("fingerprint", name=op.f("uq_usage_prices_fingerprint")),
    )
    rates_text = "CAST(rates AS TEXT)"
    distinct = bind.execute(
        sa.text(
            f"SELECT DISTINCT {', '.join(PRICE_FIELDS)}, {rates_text} AS rates_text "
            "FROM usage_events"
        )
    ).all()
    # The stored texts of one price may differ (key order): each maps to its price's id.
    ids: dict[str, int] = {}
    mapping = []
    prices = sa.table(
        "usage_prices",
        sa.column("id"),
        sa.column("fingerprint"),
        *(sa.column(name) for name in PRICE_FIELDS),
        sa.column("rates", sa.JSON()),
    )
    for row in distinct:
        fields, text_of_rates = list(row[:-1]), row[-1]
        rates = json.loads(text_of_rates) if text_of_rates not in (None, "null") else None
        key = fingerprint(fields, rates)
        if key not in ids:
            ids[key] = len(ids) + 1
            bind.execute(
                prices.insert().values(
                    id=ids[key],
                    fingerprint=key,
                    rates=rates,
                    **dict(zip(PRICE_FIELDS, fields, strict=True)),
                )
            )
        mapping.append(
            {
                **dict(zip(PRICE_FIELDS, fields, strict=True)),
                "rates_text": text_of_rates,
                "price_id": ids[key],
            }
        )
    if dialect == "postgresql" and ids:
        bind.execute(sa.text(f"SELECT setval('usage_prices_id_seq', {len(ids)})"))
    op.create_table(
        "tl_price_map",
        *(sa.Column(name, sa.String(length=128)) for name in PRICE_FIELDS),
        sa.Column("rates_text", sa.Text()),
        sa.Column("price_id", sa.Integer()),
    )
    if mapping:
        op.bulk_insert(
            sa.table(
                "tl_price_map",
                *(sa.column(name) for name in (*PRICE_FIELDS, "rates_text", "price_id")),
            ),
            mapping,
        )
    same = " AND ".join(
        f"e.{name} {'IS' if dialect == 'sqlite' else 'IS NOT DISTINCT FROM'} m.{name}"
        for name in PRICE_FIELDS
    )
    same += (
        f" AND CAST(e.rates AS TEXT) {'IS' if dialect == 'sqlite' else 'IS NOT DISTINCT FROM'}"
        " m.rates_text"
    )
    if dialect == "sqlite":
        _upgrade_sqlite(bind, same)
    else:
        _upgrade_postgresql(bind, same)
    op.drop_table("tl_price_map")


def _upgrade_postgresql(bind: Any, same: str) -> None:
    op.add_column("usage_events", sa.Column("price_id", sa.Integer(), nullable=True))
    bind.execute(
        sa.text(
            f"UPDATE usage_events AS e SET price_id = m.price_id FROM tl_price_map AS m "
            f"WHERE {same}"
        )
    )
    op.alter_column("usage_events", "price_id", nullable=False)
    op.create_foreign_key(
        op.f("fk_usage_events_price_id_usage_prices"),
        "usage_events",
        "usage_prices",
        ["price_id"],
        ["id"],
    )
    op.alter_column(
        "usage_events",
        "content_hash",
        type_=sa.LargeBinary(length=32),
        postgresql_using="decode(content_hash, 'hex')",
    )
    op.drop_index("ix_usage_events_unpriced", table_name="usage_events")
    op.drop_index(op.f("ix_usage_events_license_id"), table_name="usage_events")
    for name in (*PRICE_FIELDS, "rates"):
        op.drop_column("usage_events", name)
    _create_unpriced_index()


def _upgrade_sqlite(bind: Any, same: str) -> None:
    op.create_table(
        "tl_usage_events_lean",
        sa.Column("id", BigId, nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("external_id", sa.String(length=128), nullable=False),
        sa.Column("content_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.Column("received_at", sa.BigInteger(), nullable=False),
        sa.Column("year_month", sa.String(length=7), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_creation_input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_read_input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_1h_tokens", sa.BigInteger(), nullable=False),
        sa.Column("api_calls", sa.Integer(), nullable=False),
        sa.Column("refresh_id", sa.String(length=128), nullable=True),
        sa.Column("reservation_id", sa.String(length=64), nullable=True),
        sa.Column("license_id", sa.Integer(), nullable=True),
        sa.Column("price_id", sa.Integer(), nullable=False),
        sa.Column("cost_nano", sa.BigInteger(), nullable=True),
        sa.Column("credits_micro", sa.BigInteger(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("usage_object", sa.JSON(), nullable=True),
        sa.Column("unpriced_units", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["license_id"], ["licenses.id"], name=op.f("fk_usage_events_license_id_licenses")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_usage_events_organization_id_organizations"),
        ),
        sa.ForeignKeyConstraint(
            ["price_id"], ["usage_prices.id"], name=op.f("fk_usage_events_price_id_usage_prices")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_events")),
        sa.UniqueConstraint(
            "organization_id",
            "external_id",
            name=op.f("uq_usage_events_organization_id_external_id"),
        ),
    )
    kept = (
        "id, organization_id, external_id, content_hash, year_month, day, input_tokens, "
        "output_tokens, cache_creation_input_tokens, cache_read_input_tokens, "
        "cache_write_1h_tokens, api_calls, refresh_id, reservation_id, license_id, cost_nano, "
        "credits_micro, metadata, usage_object, unpriced_units"
    )

    # "YYYY-MM-DD HH:MM:SS.ffffff" (as UTCDateTime stored it) to integer microseconds.
    def micros(column: str) -> str:
        return (
            f"(CAST(strftime('%s', substr(e.{column}, 1, 19)) AS INTEGER) * 1000000 "
            f"+ CAST(substr(e.{column}, 21, 6) AS INTEGER))"
        )

    bind.execute(
        sa.text(
            f"INSERT INTO tl_usage_events_lean ({kept}, timestamp, received_at, price_id) "
            f"SELECT {', '.join('e.' + c.strip() for c in kept.split(','))}, "
            f"{micros('timestamp')}, {micros('received_at')}, m.price_id "
            f"FROM usage_events AS e JOIN tl_price_map AS m ON {same}"
        )
    )
    before = bind.execute(sa.text("SELECT count(*) FROM usage_events")).scalar()
    after = bind.execute(sa.text("SELECT count(*) FROM tl_usage_events_lean")).scalar()
    if before != after:
        raise RuntimeError(f"lean events: {after} of {before} rows converted")
    # The digests, hex text until now, become their 32 bytes (SQLite 3.40 has no unhex()).
    last = 0
    while True:
        chunk = bind.execute(
            sa.text(
                "SELECT id, content_hash FROM tl_usage_events_lean WHERE id > :last "
                "ORDER BY id LIMIT 10000"
            ),
            {"last": last},
        ).all()
        if not chunk:
            break
        bind.execute(
            sa.text("UPDATE tl_usage_events_lean SET content_hash = :digest WHERE id = :id"),
            [{"id": row_id, "digest": bytes.fromhex(digest)} for row_id, digest in chunk],
        )
        last = chunk[-1][0]
    op.drop_table("usage_events")
    op.rename_table("tl_usage_events_lean", "usage_events")
    with op.batch_alter_table("usage_events", schema=None, recreate="never") as batch_op:
        batch_op.create_index(
            "ix_usage_events_org_timestamp", ["organization_id", "timestamp"], unique=False
        )
    _create_unpriced_index()


def _create_unpriced_index() -> None:
    # Every unpriced (no cost) and partially priced (units left unpriced) event.
    where = sa.text("cost_nano IS NULL OR unpriced_units IS NOT NULL")
    op.create_index(
        "ix_usage_events_unpriced",
        "usage_events",
        ["price_id"],
        unique=False,
        sqlite_where=where,
        postgresql_where=where,
    )


def downgrade() -> None:
    raise NotImplementedError(
        "lean usage events cannot be converted back; restore a backup taken before upgrading"
    )
