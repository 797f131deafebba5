"""Admin routes: price overrides, and the models nobody could price."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from tokenledger.deps import Admin, AdminAlone, AppSettings, DatabaseDep, Now, Session, Viewer
from tokenledger.ledger.reprice import Selection, reprice
from tokenledger.pricing import overrides
from tokenledger.pricing.schemas import OverrideSet, RepriceIn, UnpricedModel
from tokenledger.schemas import Instant, PathText

router = APIRouter(prefix="/api/pricing", tags=["pricing"])


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
        actor=admin,
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
        actor=admin,
        valid_from=valid_from,
    )
    return Response(status_code=204)


@router.get("/unpriced")
def unpriced(session: Session, _viewer: Viewer) -> list[UnpricedModel]:
    return overrides.unpriced_models(session)


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
        actor=admin,
    )
    return outcome.render()
