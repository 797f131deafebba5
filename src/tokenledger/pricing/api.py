"""Admin routes: price overrides, and the models nobody could price."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field, StrictInt, StrictStr
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session as OrmSession

from tokenledger.deps import Admin, AdminAlone, AppSettings, DatabaseDep, Now, Session, Viewer
from tokenledger.ledger.reprice import Selection, reprice
from tokenledger.pricing import overrides
from tokenledger.schemas import INSTANT_RANGE, RANGE_RULE, InputModel, Instant, PathText, Text
from tokenledger.usage.models import INCOMPLETE_PRICING, UsageEvent, UsagePrice

router = APIRouter(prefix="/api/pricing", tags=["pricing"])

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


@router.get("/overrides")
def list_overrides(session: Session, _viewer: Viewer) -> list[dict[str, Any]]:
    return [overrides.rates_json(row) for row in overrides.list_overrides(session)]


# {model:path}: model ids may hold slashes (e.g. "meta-llama/llama-3.1-70b-instruct").
@router.put("/overrides/{provider}/{model:path}")
def set_override(
    provider: PathText,
    model: PathText,
    data: OverrideSet,
    session: Session,
    admin: Admin,
    now: Now,
) -> dict[str, Any]:
    row = overrides.set_override(
        session,
        provider=provider,
        model=model,
        rates=data.model_dump(include=set(overrides.RATE_FIELDS)),
        actor=admin.email,
        client_address=admin.address,
        valid_from=data.valid_from,
        valid_until=data.valid_until,
        tiers=[tier.model_dump(exclude_none=True) for tier in data.tiers or []],
        units=data.units,
        now=now,
    )
    return overrides.rates_json(row)


@router.delete("/overrides/{provider}/{model:path}", status_code=204)
def unset_override(
    provider: PathText,
    model: PathText,
    session: Session,
    admin: Admin,
    valid_from: Annotated[Instant | None, Query()] = None,
) -> Response:
    """Remove the override that starts at valid_from, or without it every one of the model."""
    overrides.unset_override(
        session,
        provider=provider,
        model=model,
        actor=admin.email,
        client_address=admin.address,
        valid_from=valid_from,
    )
    return Response(status_code=204)


@router.get("/unpriced")
def unpriced(session: Session, _viewer: Viewer) -> list[UnpricedModel]:
    return unpriced_models(session)


def unpriced_models(session: OrmSession) -> list[UnpricedModel]:
    """Models and units nobody could price: unpriced and partially priced events."""
    rows = session.execute(
        select(
            UsagePrice.provider,
            UsagePrice.model,
            UsagePrice.pricing,
            UsageEvent.unpriced_units,
            func.count(),
            func.min(UsageEvent.timestamp),
            func.max(UsageEvent.timestamp),
        )
        .select_from(UsageEvent)
        .join(UsagePrice, UsagePrice.id == UsageEvent.price_id)
        # The first condition is the partial index's: incomplete events are within it.
        .where(
            or_(UsageEvent.cost_nano.is_(None), UsageEvent.unpriced_units.is_not(None)),
            UsagePrice.pricing.in_(INCOMPLETE_PRICING),
        )
        .group_by(
            UsagePrice.provider, UsagePrice.model, UsagePrice.pricing, UsageEvent.unpriced_units
        )
    ).all()
    groups: dict[tuple[str, str, str], UnpricedModel] = {}
    for provider, model, pricing, units, count, first, last in rows:
        names = units.split(",") if units else []
        group = groups.get((provider, model, pricing))
        if group is None:
            groups[(provider, model, pricing)] = UnpricedModel(
                provider=provider,
                model=model,
                pricing=pricing,
                units=sorted(set(names)),
                events=count,
                first_seen=first,
                last_seen=last,
            )
            continue
        group.units = sorted(set(group.units) | set(names))
        group.events += count
        group.first_seen = min(group.first_seen, first)
        group.last_seen = max(group.last_seen, last)
    return sorted(groups.values(), key=lambda group: (-group.events, group.provider, group.model))


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


@router.post("/reprice")
def reprice_events(
    data: RepriceIn, database: DatabaseDep, admin: AdminAlone, settings: AppSettings, now: Now
) -> dict[str, Any]:
    """Price stored events again with the prices now in force at their timestamps, in
    chunks of their own transactions (ingestion goes on between them)."""
    selection = Selection(
        unpriced=data.unpriced,
        provider=data.provider,
        model=data.model,
        start=data.from_,
        end=data.to,
    )
    outcome = reprice(
        database,
        selection,
        settings=settings,
        now=now,
        dry_run=data.dry_run,
        actor=admin.email,
        client_address=admin.address,
    )
    return outcome.render()
