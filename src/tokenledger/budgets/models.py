"""Reservations: money held for a run before it happens, settled by its usage."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from tokenledger.db import Base, UTCDateTime, utcnow


class Reservation(Base):
    """A hold: status held, then settled, released or expired."""

    __tablename__ = "reservations"
    __table_args__ = (
        Index("ix_reservations_license_status", "license_id", "status"),
        # Gateway calls still held: the interrupted ones are found among these.
        Index(
            "ix_reservations_gateway_held",
            "created_at",
            sqlite_where=text("status = 'held' AND kind = 'gateway'"),
            postgresql_where=text("status = 'held' AND kind = 'gateway'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    license_id: Mapped[int | None] = mapped_column(ForeignKey("licenses.id"))
    amount_nano: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="held")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    settled_cost_nano: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # "gateway" for the hold of a call through the gateway (None: POST /api/v1/reservations),
    # with the call's provider and model: a hold its process never settled is listed as an
    # interrupted call.
    kind: Mapped[str | None] = mapped_column(String(16), default=None)
    provider: Mapped[str | None] = mapped_column(String(64), default=None)
    model: Mapped[str | None] = mapped_column(String(128), default=None)
