"""Usage events (the ledger), their rollups, and refresh runs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from tokenledger.db import Base, BigId, Instant, UTCDateTime, utcnow


class UsagePrice(Base):
    """One distinct price that events were written with: stored once, referenced by id.

    Also the provider and model an event named, and how it was priced, so that an unpriced
    or caller-priced event points at a row too. Rows are never changed or deleted.
    """

    __tablename__ = "usage_prices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # sha256 of the canonical JSON of every field below: the identity of the row.
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128))
    pricing: Mapped[str] = mapped_column(String(16))
    price_source: Mapped[str | None] = mapped_column(String(64))
    price_version: Mapped[str | None] = mapped_column(String(128))
    priced_model: Mapped[str | None] = mapped_column(String(128))
    rates: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))


class UsageEvent(Base):
    """One model call (or a few, api_calls), priced once when written and never changed.

    Lean on purpose (the largest table): what the price was lives in usage_prices, the
    digest is 32 bytes, and on SQLite instants are integers (microseconds since 1970).
    """

    __tablename__ = "usage_events"
    __table_args__ = (
        # Permanent idempotency: (organization, caller's id) is unique forever.
        UniqueConstraint("organization_id", "external_id"),
        Index("ix_usage_events_org_timestamp", "organization_id", "timestamp"),
        # Events without a cost or with units left unpriced (every unpriced and partially
        # priced one), by price row: for the list of models to price.
        Index(
            "ix_usage_events_unpriced",
            "price_id",
            sqlite_where=text("cost_nano IS NULL OR unpriced_units IS NOT NULL"),
            postgresql_where=text("cost_nano IS NULL OR unpriced_units IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"))
    external_id: Mapped[str] = mapped_column(String(128))
    content_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    timestamp: Mapped[datetime] = mapped_column(Instant)
    received_at: Mapped[datetime] = mapped_column(Instant)
    year_month: Mapped[str] = mapped_column(String(7))
    day: Mapped[str] = mapped_column(String(10))
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_creation_input_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_read_input_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_write_1h_tokens: Mapped[int] = mapped_column(BigInteger)
    api_calls: Mapped[int] = mapped_column(Integer)
    refresh_id: Mapped[str | None] = mapped_column(String(128))
    reservation_id: Mapped[str | None] = mapped_column(String(64))
    license_id: Mapped[int | None] = mapped_column(ForeignKey("licenses.id"))
    price_id: Mapped[int] = mapped_column(ForeignKey("usage_prices.id"))
    cost_nano: Mapped[int | None] = mapped_column(BigInteger)
    credits_micro: Mapped[int | None] = mapped_column(BigInteger)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON(none_as_null=True))
    # The provider's usage object as given ({"usage": ..., "service_tier": ...}), when the
    # flat columns do not tell it all: a later price fix re-reads it.
    usage_object: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    # Units the call used that no rate covered, comma-separated (partially_priced events).
    unpriced_units: Mapped[str | None] = mapped_column(Text)

    price: Mapped[UsagePrice] = relationship(lazy="joined", innerjoin=True)

    # What the price row says, read as the event's own fields.
    @property
    def provider(self) -> str:
        return self.price.provider

    @property
    def model(self) -> str:
        return self.price.model

    @property
    def pricing(self) -> str:
        return self.price.pricing

    @property
    def price_source(self) -> str | None:
        return self.price.price_source

    @property
    def price_version(self) -> str | None:
        return self.price.price_version

    @property
    def priced_model(self) -> str | None:
        return self.price.priced_model

    @property
    def rates(self) -> dict[str, Any] | None:
        return self.price.rates


# Events whose cost is missing or incomplete: counted in the rollups' unpriced_events and
# listed by GET /api/pricing/unpriced, never shown as a complete cost.
INCOMPLETE_PRICING = ("unpriced", "partially_priced")


# The summed columns of the event rollups (token_usage_monthly, usage_daily) and of
# license_usage: ingestion adds to them, reconcile recomputes them.
ROLLUP_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_tokens",
    "cache_read_tokens",
    "cost_nano",
    "api_calls",
    "event_count",
    "unpriced_events",
)
LICENSE_USAGE_FIELDS = ("cost_nano", "credits_micro", "event_count")


class TokenUsageMonthly(Base):
    """Per organization and billing month: the sums of its events, maintained per batch."""

    __tablename__ = "token_usage_monthly"

    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), primary_key=True)
    year_month: Mapped[str] = mapped_column(String(7), primary_key=True)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_creation_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_nano: Mapped[int] = mapped_column(BigInteger, default=0)
    api_calls: Mapped[int] = mapped_column(BigInteger, default=0)
    refresh_count: Mapped[int] = mapped_column(BigInteger, default=0)
    event_count: Mapped[int] = mapped_column(BigInteger, default=0)
    unpriced_events: Mapped[int] = mapped_column(BigInteger, default=0)


class UsageDaily(Base):
    """Per organization, billing day and model: sums for breakdowns, series and burn rate."""

    __tablename__ = "usage_daily"

    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    provider: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_creation_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_nano: Mapped[int] = mapped_column(BigInteger, default=0)
    api_calls: Mapped[int] = mapped_column(BigInteger, default=0)
    event_count: Mapped[int] = mapped_column(BigInteger, default=0)
    unpriced_events: Mapped[int] = mapped_column(BigInteger, default=0)


# The summed columns of usage_utc_daily: tokens by the kinds a provider's report counts,
# cost, events, and events whose cost is missing or incomplete.
UTC_ROLLUP_FIELDS = (
    "uncached_input_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "cache_read_tokens",
    "output_tokens",
    "cost_nano",
    "event_count",
    "unpriced_events",
)


class UsageUtcDaily(Base):
    """Per organization, UTC day, provider and model: the sums of its events, maintained
    with them, for setting the ledger against the providers' reports (which count UTC days
    and split cache writes by lifetime; usage_daily's days are the billing time zone's)."""

    __tablename__ = "usage_utc_daily"
    __table_args__ = (
        # A provider's days over every organization (the comparison of all accounts).
        Index("ix_usage_utc_daily_provider_day", "provider", "day"),
    )

    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    provider: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    # input_tokens of the events (the Anthropic meaning: neither cache reads nor writes)
    uncached_input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    # cache_creation_input_tokens less the 1-hour writes
    cache_write_5m_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_write_1h_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_nano: Mapped[int] = mapped_column(BigInteger, default=0)
    event_count: Mapped[int] = mapped_column(BigInteger, default=0)
    unpriced_events: Mapped[int] = mapped_column(BigInteger, default=0)


class LicenseUsage(Base):
    """Per license and billing month: spend and credits, for budgets over either period."""

    __tablename__ = "license_usage"

    license_id: Mapped[int] = mapped_column(ForeignKey("licenses.id"), primary_key=True)
    year_month: Mapped[str] = mapped_column(String(7), primary_key=True)
    cost_nano: Mapped[int] = mapped_column(BigInteger, default=0)
    credits_micro: Mapped[int] = mapped_column(BigInteger, default=0)
    event_count: Mapped[int] = mapped_column(BigInteger, default=0)


class Refresh(Base):
    """One run of the operator's product; completed runs count in the month they finished."""

    __tablename__ = "refreshes"
    __table_args__ = (
        UniqueConstraint("organization_id", "refresh_id"),
        # An organization's failed runs (the monthly route counts them) without reading
        # every run it ever had.
        Index(
            "ix_refreshes_failed",
            "organization_id",
            sqlite_where=text("status = 'failed'"),
            postgresql_where=text("status = 'failed'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"))
    refresh_id: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The month whose refresh_count includes this run, when it is completed.
    counted_month: Mapped[str | None] = mapped_column(String(7))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
