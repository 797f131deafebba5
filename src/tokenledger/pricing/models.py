"""Operator price overrides, which win over the bundled price data."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from tokenledger.db import Base, UTCDateTime, utcnow


class PriceOverrideRow(Base):
    """Rates in nano-USD per million tokens (so $3.75/MTok is 3_750_000_000)."""

    __tablename__ = "price_overrides"
    __table_args__ = (UniqueConstraint("provider", "model"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128))
    input_nano_per_mtok: Mapped[int] = mapped_column(BigInteger)
    output_nano_per_mtok: Mapped[int] = mapped_column(BigInteger)
    cache_write_5m_nano_per_mtok: Mapped[int | None] = mapped_column(BigInteger)
    cache_write_1h_nano_per_mtok: Mapped[int | None] = mapped_column(BigInteger)
    cache_read_nano_per_mtok: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
