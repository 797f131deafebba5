"""Tenant read routes (ingest keys): an organization's own credits, budget and usage.

A key of one organization reads that organization only; a service key names one with
`organization=`. The figures are the admin routes' (usage/tenant.py, on the same services).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from tokenledger import schemas
from tokenledger.auth.service import touch_api_key
from tokenledger.config import Settings
from tokenledger.deps import (
    AppSettings,
    IngestKey,
    Now,
    Session,
    UsageKey,
    get_database,
    get_hot,
)
from tokenledger.errors import DomainError
from tokenledger.organizations import refs
from tokenledger.organizations import service as organizations
from tokenledger.organizations.models import Organization
from tokenledger.periods import month_of
from tokenledger.usage import export, tenant
from tokenledger.usage.export import ClosingStreamingResponse

router = APIRouter(prefix="/api/v1/usage", tags=["tenant"])

OrganizationRef = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=200,
        description="slug or id; required with a service key, must be the key's own otherwise",
    ),
]


# RFC 3339 text only, in the one range of instants (schemas.Instant).
Instant = schemas.Instant
Month = Annotated[str | None, Query(pattern=tenant.MONTH_PATTERN, description="YYYY-MM")]


def tenant_organization(session: Session, key: IngestKey, ref: str | None) -> Organization:
    """The organization this key reads (organizations.refs.for_reader's rule)."""
    found = refs.for_reader(refs.in_session(session), key.organization_id, ref)
    return organizations.get(session, found.id)


@router.get("/summary")
async def usage_summary(
    request: Request, key: UsageKey, now: Now, organization: OrganizationRef = None
) -> JSONResponse:
    """The current period's credits and budget: used, reserved, remaining, state, the
    period's bounds and time zone, and the forecast.

    The fast path of GET /api/v1/budget: key, organization and licenses from memory, the
    figures in one statement on a bare connection (on SQLite read right here).
    """
    settings: Settings = request.app.state.settings
    database = get_database(request)
    hot = get_hot(request)
    org = refs.for_reader(hot.organizations, key.organization_id, organization)
    licenses = {org.id: hot.licenses(org.id)}

    def read() -> dict[str, Any]:
        if key.touch_due:
            with database.session(write=True) as touch:
                touch_api_key(touch, key.key_id, now)
        with database.single_read() as connection:
            return tenant.summary(connection, org, settings, now, licenses)

    if key.touch_due or database.dialect_name != "sqlite":
        body = await run_in_threadpool(read)
    else:
        body = read()
    return JSONResponse(body)


@router.get("/monthly")
def usage_monthly(
    session: Session, key: IngestKey, settings: AppSettings, organization: OrganizationRef = None
) -> list[dict[str, Any]]:
    """The monthly table of the token-usage tab, newest first."""
    org = tenant_organization(session, key, organization)
    return tenant.monthly(session, org, settings)


@router.get("/models")
def usage_models(
    session: Session,
    key: IngestKey,
    settings: AppSettings,
    now: Now,
    month: Month = None,
    organization: OrganizationRef = None,
) -> dict[str, Any]:
    """Usage per model in a billing month (default: this one)."""
    org = tenant_organization(session, key, organization)
    return tenant.models(session, org, settings, month or month_of(now, settings.timezone))


@router.get("/daily")
def usage_daily(
    session: Session,
    key: IngestKey,
    settings: AppSettings,
    now: Now,
    month: Month = None,
    organization: OrganizationRef = None,
) -> dict[str, Any]:
    """Usage per billing day of a month (default: this one), days without usage as zeros."""
    org = tenant_organization(session, key, organization)
    return tenant.daily(session, org, settings, month or month_of(now, settings.timezone))


@router.get(
    "/events.csv",
    response_class=ClosingStreamingResponse,
    status_code=200,
    responses={
        200: {
            "description": "The organization's events in [from, to), oldest first, as CSV.",
            "content": {"text/csv": {"schema": {"type": "string"}}},
        }
    },
)
def usage_events_csv(
    request: Request,
    session: Session,
    key: IngestKey,
    settings: AppSettings,
    start: Annotated[Instant, Query(alias="from")],
    end: Annotated[Instant, Query(alias="to")],
    organization: OrganizationRef = None,
) -> ClosingStreamingResponse:
    org = tenant_organization(session, key, organization)
    if end <= start:
        raise DomainError(422, "invalid_range", "'to' must be after 'from'")
    return ClosingStreamingResponse(
        export.csv_chunks(
            get_database(request), org.id, start, end, columns=tenant.csv_columns(settings)
        ),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{org.slug}-events-{start.date()}'
            f'-{end.date()}.csv"'
        },
    )
