"""Threshold alerts, webhook endpoints and the durable delivery outbox."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from tokenledger.db import Base, BigId, UTCDateTime, utcnow

ARMED = text("rearmed_at IS NULL")


class Alert(Base):
    """A threshold crossed: budget.warning, budget.exhausted, budget.forecast,
    credits.warning or credits.exhausted, once per license and period while armed; or
    provider.drift, a provider's bill apart from the ledger (no organization)."""

    __tablename__ = "alerts"
    # Once per license, threshold and period while armed: insert-or-skip against this
    # index. A change of the license's limits that brings its use back below a threshold
    # re-arms it (sets rearmed_at); the threshold may then fire once more.
    __table_args__ = (
        Index(
            "uq_alerts_armed",
            "license_id",
            "type",
            "period",
            unique=True,
            sqlite_where=ARMED,
            postgresql_where=ARMED,
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # Both None for an alert of no organization (provider.drift: a provider's day).
    organization_id: Mapped[int | None] = mapped_column(ForeignKey("organizations.id"), index=True)
    license_id: Mapped[int | None] = mapped_column(ForeignKey("licenses.id"))
    type: Mapped[str] = mapped_column(String(32))
    period: Mapped[str] = mapped_column(String(16))
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    rearmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class Webhook(Base):
    __tablename__ = "webhooks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    secret: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(String(500), default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookDelivery(Base):
    """One alert to one webhook: written with the alert, delivered by the worker."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("webhook_id", "alert_id"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id"))
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    last_error: Mapped[str | None] = mapped_column(String(500), default=None)
    last_status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
