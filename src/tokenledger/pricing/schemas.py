"""Price override and repricing shapes of the API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field, StrictInt, StrictStr

from tokenledger.schemas import INSTANT_RANGE, RANGE_RULE, InputModel, Instant, Text

# Decimal text or a whole number; strict, so that true is not taken for 1.
RateText = StrictStr | StrictInt | None


class OverrideTier(InputModel):
    """Rates for prompts above a size (input, cache reads and writes): all the request's
    tokens are then priced at them, as genai-prices' long-context tiers are."""

    above_prompt_tokens: StrictInt = Field(ge=0)
    input: RateText = None
    output: RateText = None
    cache_write_5m: RateText = None
    cache_write_1h: RateText = None
    cache_read: RateText = None


class OverrideSet(InputModel):
    input: StrictStr | StrictInt = Field(description="USD per million input tokens")
    output: StrictStr | StrictInt
    cache_write_5m: RateText = None
    cache_write_1h: RateText = None
    cache_read: RateText = None
    valid_from: Instant | None = Field(
        default=None,
        description=f"first event timestamp it prices; default: now; {INSTANT_RANGE}",
    )
    valid_until: Instant | None = Field(
        default=None,
        description=f"end, exclusive; after valid_from (422 otherwise); {INSTANT_RANGE}",
    )
    tiers: list[OverrideTier] | None = Field(default=None, max_length=8)
    units: dict[Annotated[str, Field(max_length=64)], StrictStr | StrictInt] | None = Field(
        default=None,
        max_length=16,
        description="further units by genai-prices price key, USD per 1000 "
        "(e.g. requests_kcount, web_searches_kcount)",
    )


class UnpricedModel(BaseModel):
    provider: str
    model: str
    # unpriced: no price at all; partially_priced: a cost that leaves out `units`
    pricing: str
    # the units (or unknown usage fields) no rate covered, e.g. ["web_searches"]
    units: list[str]
    events: int
    first_seen: datetime
    last_seen: datetime


class RepriceIn(InputModel):
    """Either the unpriced events (`unpriced: true`), or one model's events in [from, to):
    `model`, `from` and `to` together, 'to' after 'from'; not both (422 otherwise)."""

    unpriced: bool = False
    provider: Text | None = Field(default=None, min_length=1, max_length=64)
    model: Text | None = Field(
        default=None, min_length=1, max_length=128, description="with from and to"
    )
    from_: Instant | None = Field(default=None, alias="from", description="with model and to")
    to: Instant | None = Field(default=None, description=f"with model and from; {RANGE_RULE}")
    dry_run: bool = False
