"""Ingestion routes (ingest keys): usage events and refresh outcomes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from tokenledger.config import Settings
from tokenledger.db import MAX_ROW_ID
from tokenledger.deps import (
    AppSettings,
    IngestKey,
    IngestPrincipal,
    Now,
    Session,
    UsageKey,
    get_hot,
)
from tokenledger.errors import DomainError
from tokenledger.hot import HotReads, OrgRef
from tokenledger.ledger import ingest
from tokenledger.ledger.refreshes import record_refresh
from tokenledger.ledger.writer import UsageWriter
from tokenledger.middleware import ParsedJsonRoute
from tokenledger.organizations import service as organizations
from tokenledger.organizations.models import Organization
from tokenledger.schemas import PathText
from tokenledger.usage.schemas import RefreshIn, RefreshRead, UsageBatch, UsageResponse

router = APIRouter(prefix="/api/v1", tags=["ingestion"], route_class=ParsedJsonRoute)


def organization_for_key(session: Session, key: IngestKey, ref: str | int | None) -> Organization:
    """The organization a key may act for: its own, or the one a service key names."""
    if ref is None:
        if key.organization_id is None:
            raise DomainError(
                422, "organization_required", "a service key must name the organization"
            )
        return organizations.get(session, key.organization_id)
    org = organizations.by_slug_or_id(session, str(ref))
    if org is None:
        raise DomainError(404, "organization_not_found", f"unknown organization {ref!r}")
    if key.organization_id is not None and org.id != key.organization_id:
        raise DomainError(403, "organization_mismatch", "this key belongs to another organization")
    return org


def organization_ref_for_key(hot: HotReads, key: IngestPrincipal, ref: str | None) -> OrgRef:
    """organization_for_key's rules, answered from the hot cache."""
    if ref is None:
        if key.organization_id is None:
            raise DomainError(
                422, "organization_required", "a service key must name the organization"
            )
        _, by_id = hot.organizations(set(), {key.organization_id})
        org = by_id.get(key.organization_id)
        if org is None:
            raise DomainError(404, "organization_not_found", "the key's organization is gone")
        return org
    org_id = int(ref) if ref.isascii() and ref.isdigit() and 1 <= int(ref) <= MAX_ROW_ID else None
    by_slug, by_id = hot.organizations({ref}, {org_id} if org_id is not None else set())
    found = by_slug.get(ref) or (by_id.get(org_id) if org_id is not None else None)
    if found is None:
        raise DomainError(404, "organization_not_found", f"unknown organization {ref!r}")
    if key.organization_id is not None and found.id != key.organization_id:
        raise DomainError(403, "organization_mismatch", "this key belongs to another organization")
    return found


@router.post("/usage", response_model=UsageResponse)
async def post_usage(request: Request, batch: UsageBatch, key: UsageKey, now: Now) -> JSONResponse:
    """Validate and price here; the writer stores it with the requests of its group and
    answers after the commit. The whole unit of work is ledger.service.record_usage."""
    settings: Settings = request.app.state.settings
    writer: UsageWriter = request.app.state.usage_writer
    hot = get_hot(request)
    prepared = ingest.prepare(
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
    org = organization_for_key(session, key, data.organization)
    refresh = record_refresh(session, org, refresh_id, data, settings.timezone, now)
    return RefreshRead(
        refresh_id=refresh.refresh_id,
        organization=org.slug,
        status=refresh.status,
        started_at=refresh.started_at,
        finished_at=refresh.finished_at,
        counted_month=refresh.counted_month,
    )
