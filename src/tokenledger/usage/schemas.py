"""Ingestion request and response shapes: strict, so bad input stores nothing."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from tokenledger.money import MAX_USD, MoneyError, to_decimal
from tokenledger.schemas import InputModel

MAX_TOKENS = 10**9
MAX_METADATA_BYTES = 4096

TokenCount = Annotated[StrictInt, Field(ge=0, le=MAX_TOKENS)]


def parse_timestamp(value: Any) -> datetime:
    """RFC 3339 text with an offset; naive times and numbers are refused."""
    if isinstance(value, datetime):  # built in Python (demo data, tests), not from JSON
        parsed = value
    elif not isinstance(value, str):
        raise ValueError("must be an RFC 3339 timestamp string")
    else:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ValueError("must be an RFC 3339 timestamp, e.g. 2026-01-31T12:00:00Z") from exc
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError("timestamp needs an offset (Z or +01:00)")
    return parsed


def parse_usd(value: Any) -> Decimal:
    try:
        amount = to_decimal(value)
    except MoneyError as exc:
        raise ValueError(str(exc)) from exc
    if amount < 0:
        raise ValueError("must not be negative")
    if amount > MAX_USD:
        raise ValueError(f"must be at most {MAX_USD}")
    if amount.as_tuple().exponent < -9:  # type: ignore[operator]
        raise ValueError("at most 9 decimal places")
    return amount


Timestamp = Annotated[datetime, BeforeValidator(parse_timestamp)]
UsdInput = Annotated[Decimal, BeforeValidator(parse_usd)]


class CacheCreation(InputModel):
    ephemeral_5m_input_tokens: TokenCount = 0
    ephemeral_1h_input_tokens: TokenCount = 0


class UsageEventIn(InputModel):
    id: StrictStr = Field(min_length=1, max_length=128)
    organization: StrictStr | StrictInt | None = None
    timestamp: Timestamp | None = None
    provider: StrictStr = Field(default="anthropic", min_length=1, max_length=64)
    model: StrictStr = Field(min_length=1, max_length=128)
    input_tokens: TokenCount = 0
    output_tokens: TokenCount = 0
    cache_creation_input_tokens: TokenCount | None = None
    cache_read_input_tokens: TokenCount = 0
    cache_creation: CacheCreation | None = None
    refresh_id: StrictStr | None = Field(default=None, min_length=1, max_length=128)
    api_calls: Annotated[StrictInt, Field(ge=0, le=1_000_000)] = 1
    cost_usd: UsdInput | None = None
    reservation_id: StrictStr | None = Field(default=None, min_length=1, max_length=64)
    metadata: dict[str, Any] | None = None

    @field_validator("provider")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.strip().lower()

    @field_validator("metadata")
    @classmethod
    def _small(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and len(json.dumps(value)) > MAX_METADATA_BYTES:
            raise ValueError(f"metadata is limited to {MAX_METADATA_BYTES} bytes of JSON")
        return value

    @model_validator(mode="after")
    def _cache_split(self) -> UsageEventIn:
        if self.cache_creation is not None:
            split = (
                self.cache_creation.ephemeral_5m_input_tokens
                + self.cache_creation.ephemeral_1h_input_tokens
            )
            if self.cache_creation_input_tokens is None:
                self.cache_creation_input_tokens = split
            elif self.cache_creation_input_tokens != split:
                raise ValueError(
                    "cache_creation_input_tokens must equal the sum of cache_creation's "
                    "ephemeral_5m_input_tokens and ephemeral_1h_input_tokens"
                )
        return self

    @property
    def cache_write_tokens(self) -> int:
        return self.cache_creation_input_tokens or 0

    @property
    def cache_write_1h_tokens(self) -> int:
        return self.cache_creation.ephemeral_1h_input_tokens if self.cache_creation else 0


class UsageBatch(InputModel):
    events: list[UsageEventIn] = Field(min_length=1, max_length=1000)


Pricing = Literal["priced", "unpriced", "provided"]


class EventResult(BaseModel):
    id: str
    organization: str
    status: Literal["created", "duplicate"]
    cost_usd: str | None
    credits: str | None
    pricing: Pricing


class BudgetStateRead(BaseModel):
    organization: str
    organization_id: int
    allowed: bool
    state: Literal["ok", "warning", "exhausted", "no_license", "suspended"]
    license_id: int | None
    enforcement: str | None
    budget_period: str | None
    period: str | None
    credits_total: str | None
    credits_used: str | None
    credits_reserved: str | None
    credits_remaining: str | None
    token_budget_usd: str | None
    spent_usd: str | None
    reserved_usd: str | None
    remaining_usd: str | None
    forecast: dict[str, Any] | None = None


class UsageResponse(BaseModel):
    results: list[EventResult]
    budgets: list[BudgetStateRead]


class RefreshIn(InputModel):
    organization: StrictStr | StrictInt | None = None
    status: Literal["running", "completed", "failed"]
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None


class RefreshRead(BaseModel):
    refresh_id: str
    organization: str
    status: str
    started_at: datetime | None
    finished_at: datetime | None
    counted_month: str | None
