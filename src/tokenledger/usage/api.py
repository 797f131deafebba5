"""Ingestion routes (ingest keys): usage events and refresh outcomes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from tokenledger.alerts import service as alerts
from tokenledger.budgets import service as budgets
from tokenledger.db import utcnow
from tokenledger.deps import AppSettings, IngestKey, Session
from tokenledger.errors import DomainError
from tokenledger.organizations import service as organizations
from tokenledger.organizations.models import Organization
from tokenledger.schemas import PathText
from tokenledger.usage import ingest as ingest_service
from tokenledger.usage.refreshes import record_refresh
from tokenledger.usage.schemas import RefreshIn, RefreshRead, UsageBatch, UsageResponse

router = APIRouter(prefix="/api/v1", tags=["ingestion"])


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


@router.post("/usage", response_model=UsageResponse)
def post_usage(
    request: Request, batch: UsageBatch, session: Session, key: IngestKey, settings: AppSettings
) -> JSONResponse:
    outcome, states = record_usage(request, session, batch, key, settings, utcnow())
    # Built from plain values in the documented shape: validating a thousand results
    # again on the way out would cost more than the rest of the response.
    return JSONResponse({"results": outcome.results, "budgets": states})


def record_usage(
    request: Request,
    session: Session,
    batch: UsageBatch,
    key: IngestKey,
    settings: AppSettings,
    now: datetime,
) -> tuple[ingest_service.IngestOutcome, list[dict[str, Any]]]:
    """One batch of usage (from /api/v1/usage or /v1/traces): ingest, settle, alert."""
    outcome = ingest_service.ingest(
        session, batch, key_org_id=key.organization_id, settings=settings, now=now
    )
    budgets.settle_reservations(session, outcome.created_rows, now)
    months = alerts.months_by_license(outcome.created_rows)
    alerts.evaluate(session, outcome.license_ids, settings.timezone, now, months)
    orgs = [session.get(Organization, org_id) for org_id in outcome.organization_ids]
    states = budgets.budget_states(session, [org for org in orgs if org], settings.timezone, now)
    metrics = request.app.state.metrics
    metrics.events.labels("created").inc(outcome.created)
    metrics.events.labels("duplicate").inc(outcome.duplicates)
    return outcome, states


@router.put("/refreshes/{refresh_id:path}")
def put_refresh(
    refresh_id: PathText, data: RefreshIn, session: Session, key: IngestKey, settings: AppSettings
) -> RefreshRead:
    org = organization_for_key(session, key, data.organization)
    refresh = record_refresh(session, org, refresh_id, data, settings.timezone, utcnow())
    return RefreshRead(
        refresh_id=refresh.refresh_id,
        organization=org.slug,
        status=refresh.status,
        started_at=refresh.started_at,
        finished_at=refresh.finished_at,
        counted_month=refresh.counted_month,
    )
