"""Ingestion request and response shapes: strict, so bad input stores nothing."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from tokenledger import schemas
from tokenledger.budgets.schemas import BudgetStateRead
from tokenledger.schemas import MAX_TOKENS, InputModel, JsonObject, TokenCount, UsdInput

MAX_METADATA_BYTES = 4096
MAX_USAGE_BYTES = 8192
_ANTHROPIC_EXTRAS = (
    "server_tool_use",
    "service_tier",
    "inference_geo",
    "speed",
    "output_tokens_details",
)

# Identifiers are stored as text: PostgreSQL cannot hold NUL, and no control character
# (C0, DEL or C1) belongs in an id or a model name.
_PRINTABLE = schemas.PRINTABLE
PRINTABLE = re.compile(_PRINTABLE)
OrganizationRef = Annotated[StrictStr, Field(pattern=_PRINTABLE)] | StrictInt


# Usage timestamps and refresh times: the shared instant type.
Timestamp = schemas.Instant


class CacheCreation(InputModel):
    ephemeral_5m_input_tokens: TokenCount = 0
    ephemeral_1h_input_tokens: TokenCount = 0


class UsageEventIn(InputModel):
    id: StrictStr = Field(min_length=1, max_length=128, pattern=_PRINTABLE)
    organization: OrganizationRef | None = Field(
        default=None, description=schemas.ORGANIZATION_RULE
    )
    timestamp: Timestamp | None = Field(
        default=None,
        description=(
            "RFC 3339 with an offset, default the time of receipt; at most 5 minutes in the "
            "future, and a new event no older than TOKENLEDGER_BACKFILL_MAX_AGE_DAYS (400 "
            f"days by default), 422 otherwise; always {schemas.INSTANT_RANGE}"
        ),
    )
    # Inferred from the model when not given (ledger/providers.py).
    provider: StrictStr | None = Field(
        default=None, min_length=1, max_length=64, pattern=_PRINTABLE
    )
    model: StrictStr = Field(min_length=1, max_length=128, pattern=_PRINTABLE)
    input_tokens: TokenCount = 0
    output_tokens: TokenCount = 0
    cache_creation_input_tokens: TokenCount | None = None
    cache_read_input_tokens: TokenCount = 0
    cache_creation: CacheCreation | None = None
    refresh_id: StrictStr | None = Field(
        default=None, min_length=1, max_length=128, pattern=_PRINTABLE
    )
    api_calls: Annotated[StrictInt, Field(ge=0, le=1_000_000)] = 1
    cost_usd: UsdInput | None = None
    reservation_id: StrictStr | None = Field(
        default=None, min_length=1, max_length=64, pattern=_PRINTABLE
    )
    metadata: JsonObject | None = None
    # batch, priority, flex, ...: Anthropic's usage field, or the tier an OpenAI or Gemini
    # response names (or the caller knows, for their batch APIs).
    service_tier: StrictStr | None = Field(
        default=None, min_length=1, max_length=32, pattern=_PRINTABLE
    )
    # Anthropic's further usage fields, so that message.usage.model_dump() can be merged in.
    server_tool_use: JsonObject | None = None
    inference_geo: StrictStr | None = Field(default=None, max_length=64, pattern=_PRINTABLE)
    speed: StrictStr | None = Field(default=None, max_length=32, pattern=_PRINTABLE)
    output_tokens_details: JsonObject | None = None
    # The provider's own usage object, untouched (instead of the flat counts above). Declared
    # last: its validator sees every other field.
    usage: JsonObject | None = Field(
        default=None,
        description=f"the provider's usage object as it came; each count in it 0 to "
        f"{MAX_TOKENS}, at most {MAX_USAGE_BYTES} bytes of JSON",
    )

    @field_validator("provider")
    @classmethod
    def _lower(cls, value: str | None) -> str | None:
        return None if value is None else value.strip().lower()

    @field_validator("cache_read_input_tokens", mode="before")
    @classmethod
    def _none_is_zero(cls, value: Any) -> Any:
        # The Anthropic SDK's model_dump() gives None for counts it did not receive.
        return 0 if value is None else value

    @field_validator("server_tool_use", "output_tokens_details")
    @classmethod
    def _bounded(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and len(json.dumps(value)) > MAX_USAGE_BYTES:
            raise ValueError(f"limited to {MAX_USAGE_BYTES} bytes of JSON")
        return value

    @field_validator("usage")
    @classmethod
    def _one_kind_of_usage(
        cls, value: dict[str, Any] | None, info: ValidationInfo
    ) -> dict[str, Any] | None:
        # A field validator, not a model validator: it runs only when usage is given.
        if value is None:
            return value
        if len(json.dumps(value)) > MAX_USAGE_BYTES:
            raise ValueError(f"limited to {MAX_USAGE_BYTES} bytes of JSON")
        flat = [
            name
            for name in (
                "input_tokens",
                "output_tokens",
                "cache_creation_input_tokens",
                "cache_read_input_tokens",
                "cache_creation",
                *(name for name in _ANTHROPIC_EXTRAS if name != "service_tier"),
            )
            if info.data.get(name) not in (None, 0)
        ]
        if flat:
            raise ValueError(
                "give the counts either in usage (the provider's object) or as flat fields, "
                f"not both: {', '.join(flat)}"
            )
        return value

    def anthropic_extras(self) -> dict[str, Any]:
        """The Anthropic usage fields this flat event carries beside the token counts."""
        return {
            name: value for name in _ANTHROPIC_EXTRAS if (value := getattr(self, name)) is not None
        }

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

    @field_validator("events", mode="wrap")
    @classmethod
    def _name_the_event(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """Each error names its event by position and id, so the caller knows which to fix."""
        try:
            return handler(value)
        except ValidationError as exc:
            errors = []
            for error in exc.errors():
                loc = error["loc"]
                if not loc or not isinstance(loc[0], int):
                    raise
                raw = value[loc[0]] if isinstance(value, list) else None
                event_id = raw.get("id") if isinstance(raw, dict) else None
                named = f"events[{loc[0]}]"
                if isinstance(event_id, str) and 0 < len(event_id) <= 128:
                    named += f" (id {event_id!r})"
                errors.append(
                    InitErrorDetails(
                        type=PydanticCustomError(
                            error["type"], "{event}: {msg}", {"event": named, "msg": error["msg"]}
                        ),
                        loc=loc,
                        input=error["input"],
                    )
                )
            raise ValidationError.from_exception_data(cls.__name__, errors) from None


Pricing = Literal["priced", "partially_priced", "unpriced", "provided"]


class EventResult(BaseModel):
    id: str
    organization: str
    status: Literal["created", "duplicate"]
    cost_usd: str | None
    credits: str | None
    pricing: Pricing


class UsageResponse(BaseModel):
    results: list[EventResult]
    budgets: list[BudgetStateRead]


class RefreshIn(InputModel):
    organization: OrganizationRef | None = Field(
        default=None, description=schemas.ORGANIZATION_RULE
    )
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
