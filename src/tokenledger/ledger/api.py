"""Ingestion routes (ingest keys): usage events and refresh outcomes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from tokenledger.config import Settings
from tokenledger.deps import (
    AppSettings,
    IngestKey,
    Now,
    Session,
    UsageKey,
    get_hot,
)
from tokenledger.ledger.prepare import prepare
from tokenledger.ledger.refreshes import record_refresh
from tokenledger.ledger.writer import UsageWriter
from tokenledger.middleware import ParsedJsonRoute
from tokenledger.organizations import refs
from tokenledger.schemas import PathText
from tokenledger.usage.schemas import RefreshIn, RefreshRead, UsageBatch, UsageResponse

router = APIRouter(prefix="/api/v1", tags=["ingestion"], route_class=ParsedJsonRoute)


@router.post("/usage", response_model=UsageResponse)
async def post_usage(request: Request, batch: UsageBatch, key: UsageKey, now: Now) -> JSONResponse:
    """Validate and price here; the writer stores it with the requests of its group and
    answers after the commit. The whole unit of work is ledger.service.record_usage."""
    settings: Settings = request.app.state.settings
    writer: UsageWriter = request.app.state.usage_writer
    hot = get_hot(request)
    prepared = prepare(
        batch,
        key_org_id=key.organization_id,
        organizations=hot.organizations,
        book=hot.price_book(),
        settings=settings,
        now=now,
    )
    if key.touch_due:
        prepared.touch_key_id = key.key_id
    answer = await writer.write(prepared)
    # Built from plain values in the documented shape: validating a thousand results
    # again on the way out would cost more than the rest of the response.
    return JSONResponse(answer.body())


@router.put("/refreshes/{refresh_id:path}")
def put_refresh(
    refresh_id: PathText,
    data: RefreshIn,
    session: Session,
    key: IngestKey,
    settings: AppSettings,
    now: Now,
) -> RefreshRead:
    org = refs.organization_for_key(session, key.organization_id, data.organization)
    refresh = record_refresh(session, org, refresh_id, data, settings.timezone, now)
    return RefreshRead(
        refresh_id=refresh.refresh_id,
        organization=org.slug,
        status=refresh.status,
        started_at=refresh.started_at,
        finished_at=refresh.finished_at,
        counted_month=refresh.counted_month,
    )
