"""Imported provider reports: syncs, their rows, the day each sync holds, and the mapping of
provider API keys, workspaces and projects to organizations."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from tokenledger.db import Base, BigId, UTCDateTime

PROVIDERS = ("anthropic", "openai")
# What a provider account is: an Anthropic API key or workspace, an OpenAI API key or project.
ACCOUNT_KINDS = ("api_key", "workspace", "project")
# The token kinds a report row counts, in the order the comparison shows them.
TOKEN_KINDS = (
    "uncached_input_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "cache_read_tokens",
    "output_tokens",
    "web_search_requests",
)


class ProviderSync(Base):
    """One import of a provider's reports over a range of UTC days."""

    __tablename__ = "provider_syncs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider: Mapped[str] = mapped_column(String(16))
    first_day: Mapped[str] = mapped_column(String(10))
    last_day: Mapped[str] = mapped_column(String(10))
    # running, succeeded or failed; a failed sync's rows are deleted and were never shown.
    status: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(320))
    row_count: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str | None] = mapped_column(String(500), default=None)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class ProviderReportRow(Base):
    """A provider's usage and cost of one UTC day, model, API key and workspace (Anthropic)
    or project (OpenAI), as one sync imported it. Rows of a sync are seen only once the
    sync holds the day (provider_report_days)."""

    __tablename__ = "provider_report_rows"
    __table_args__ = (
        UniqueConstraint(
            "sync_id", "day", "model", "api_key_id", "workspace_id", name="uq_provider_report_rows"
        ),
        # An organization's rows: by the keys, or by the workspaces/projects, mapped to it.
        Index("ix_provider_report_rows_key", "api_key_id", "day"),
        Index("ix_provider_report_rows_workspace", "workspace_id", "day"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    sync_id: Mapped[int] = mapped_column(ForeignKey("provider_syncs.id", ondelete="CASCADE"))
    day: Mapped[str] = mapped_column(String(10))
    model: Mapped[str] = mapped_column(String(128))
    # "" where the report names none (usage without a key, the default workspace).
    api_key_id: Mapped[str] = mapped_column(String(128))
    workspace_id: Mapped[str] = mapped_column(String(128))
    uncached_input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_write_5m_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_write_1h_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    web_search_requests: Mapped[int] = mapped_column(BigInteger, default=0)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_nano: Mapped[int] = mapped_column(BigInteger, default=0)


class ProviderReportTotal(Base):
    """The sum of a sync's rows per UTC day and model (all accounts): what the comparison
    reads when it is not narrowed to one organization."""

    __tablename__ = "provider_report_totals"

    sync_id: Mapped[int] = mapped_column(
        ForeignKey("provider_syncs.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    uncached_input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_write_5m_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_write_1h_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    web_search_requests: Mapped[int] = mapped_column(BigInteger, default=0)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_nano: Mapped[int] = mapped_column(BigInteger, default=0)


class ProviderReportDay(Base):
    """Which sync's figures stand for a provider's UTC day: the swap that makes a sync
    visible is one update of these rows."""

    __tablename__ = "provider_report_days"

    provider: Mapped[str] = mapped_column(String(16), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    sync_id: Mapped[int] = mapped_column(ForeignKey("provider_syncs.id"), index=True)
    # The day was not over (UTC) when it was imported: its figures will still grow.
    partial: Mapped[bool] = mapped_column(Boolean)
    synced_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ProviderAccount(Base):
    """A provider API key, workspace or project seen in a report, and the organization an
    operator mapped it to (None: unassigned)."""

    __tablename__ = "provider_accounts"
    __table_args__ = (UniqueConstraint("provider", "kind", "external_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16))
    external_id: Mapped[str] = mapped_column(String(128))
    organization_id: Mapped[int | None] = mapped_column(
        ForeignKey("organizations.id"), default=None, index=True
    )
    first_seen_day: Mapped[str | None] = mapped_column(String(10), default=None)
    last_seen_day: Mapped[str | None] = mapped_column(String(10), default=None)


class ProviderDriftAlert(Base):
    """provider.drift fires once per provider and UTC day: the key of that rule."""

    __tablename__ = "provider_drift_alerts"

    provider: Mapped[str] = mapped_column(String(16), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id"))


class ProviderSyncLease(Base):
    """One row per provider: whoever holds an unexpired lease runs that provider's sync
    (several server workers, the command line), others skip."""

    __tablename__ = "provider_sync_leases"

    provider: Mapped[str] = mapped_column(String(16), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    locked_until: Mapped[datetime] = mapped_column(UTCDateTime)
