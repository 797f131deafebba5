"""Operator price overrides, which win over the bundled price data."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from tokenledger.db import Base, UTCDateTime, utcnow


class PriceOverrideRow(Base):
    """Rates in nano-USD per million tokens (so $3.75/MTok is 3_750_000_000), in force for
    events whose timestamp lies in [valid_from, valid_until).

    `tiers`: long-context tiers, [{"above_prompt_tokens": 200000, "input": "6", ...}] (USD
    per million tokens as decimal text); `unit_rates`: further units by genai-prices' price
    key, e.g. {"requests_kcount": "1.5", "web_searches_kcount": "10"} (USD per 1000).
    """

    __tablename__ = "price_overrides"
    __table_args__ = (UniqueConstraint("provider", "model", "valid_from"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128))
    input_nano_per_mtok: Mapped[int] = mapped_column(BigInteger)
    output_nano_per_mtok: Mapped[int] = mapped_column(BigInteger)
    cache_write_5m_nano_per_mtok: Mapped[int | None] = mapped_column(BigInteger)
    cache_write_1h_nano_per_mtok: Mapped[int | None] = mapped_column(BigInteger)
    cache_read_nano_per_mtok: Mapped[int | None] = mapped_column(BigInteger)
    valid_from: Mapped[datetime] = mapped_column(UTCDateTime)
    valid_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    tiers: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON(none_as_null=True))
    unit_rates: Mapped[dict[str, str] | None] = mapped_column(JSON(none_as_null=True))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
