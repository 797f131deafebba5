"""Admin routes of the origin (/api/token-usage/...), plus breakdowns, export, dashboard."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import AwareDatetime
from sqlalchemy import select

from tokenledger.db import Database, utcnow
from tokenledger.deps import Admin, AppSettings, RowId, Session, Viewer, get_database
from tokenledger.errors import DomainError
from tokenledger.licenses import service as licenses
from tokenledger.licenses.budget import change_budget
from tokenledger.licenses.schemas import BudgetUpdate
from tokenledger.money import format_credits, format_usd
from tokenledger.organizations import service as organizations
from tokenledger.usage import queries
from tokenledger.usage.models import UsageEvent

router = APIRouter(tags=["token-usage"])


@router.get("/api/token-usage/overview")
def usage_overview(
    session: Session, _viewer: Viewer, settings: AppSettings
) -> list[dict[str, Any]]:
    return queries.overview(session, settings.timezone, utcnow())


@router.get("/api/token-usage/{org_id}")
def organization_usage(
    org_id: RowId, session: Session, _viewer: Viewer, settings: AppSettings
) -> list[dict[str, Any]]:
    organizations.get(session, org_id)
    return queries.monthly(session, org_id, settings.timezone)


@router.get("/api/token-usage/{org_id}/current")
def organization_current(
    org_id: RowId, session: Session, _viewer: Viewer, settings: AppSettings
) -> dict[str, Any]:
    org = organizations.get(session, org_id)
    return queries.current(session, org, settings.timezone, utcnow())


@router.get("/api/token-usage/{org_id}/models")
def organization_models(
    org_id: RowId,
    session: Session,
    _viewer: Viewer,
    settings: AppSettings,
    month: Annotated[str | None, Query(pattern=r"^\d{4}-(0[1-9]|1[0-2])$")] = None,
) -> dict[str, Any]:
    organizations.get(session, org_id)
    from tokenledger.usage.periods import current_month

    year_month = month or current_month(settings.timezone)
    return {
        "year_month": year_month,
        "models": queries.models_of_month(session, org_id, year_month),
    }


@router.get("/api/token-usage/{org_id}/daily")
def organization_daily(
    org_id: RowId,
    session: Session,
    _viewer: Viewer,
    settings: AppSettings,
    days: Annotated[int, Query(ge=1, le=366)] = 30,
) -> list[dict[str, Any]]:
    organizations.get(session, org_id)
    return queries.daily_series(session, org_id, days, settings.timezone, utcnow())


_CSV_COLUMNS = (
    "id",
    "timestamp",
    "received_at",
    "provider",
    "model",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cache_write_1h_tokens",
    "api_calls",
    "refresh_id",
    "reservation_id",
    "license_id",
    "pricing",
    "cost_usd",
    "credits",
    "price_source",
    "price_version",
    "priced_model",
    "year_month",
)


def _csv_rows(database: Database, org_id: int, start: datetime, end: datetime) -> Iterator[str]:
    """Stream in constant memory: a server-side cursor, a fixed-size buffer per chunk."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(_CSV_COLUMNS)
    yield buffer.getvalue()
    E = UsageEvent
    query = (
        select(E)
        .where(E.organization_id == org_id, E.timestamp >= start, E.timestamp < end)
        .order_by(E.timestamp, E.id)
        .execution_options(yield_per=1000, stream_results=True)
    )
    with database.session(write=False) as session:
        for partition in session.scalars(query).partitions():
            buffer.seek(0)
            buffer.truncate()
            for e in partition:
                writer.writerow(
                    (
                        _cell(e.external_id),
                        e.timestamp.isoformat(),
                        e.received_at.isoformat(),
                        _cell(e.provider),
                        _cell(e.model),
                        e.input_tokens,
                        e.output_tokens,
                        e.cache_creation_input_tokens,
                        e.cache_read_input_tokens,
                        e.cache_write_1h_tokens,
                        e.api_calls,
                        _cell(e.refresh_id or ""),
                        _cell(e.reservation_id or ""),
                        e.license_id or "",
                        e.pricing,
                        format_usd(e.cost_nano) or "",
                        format_credits(e.credits_micro) or "",
                        e.price_source or "",
                        e.price_version or "",
                        e.priced_model or "",
                        e.year_month,
                    )
                )
            session.expunge_all()
            yield buffer.getvalue()


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(text: str) -> str:
    """Caller-supplied text, defused so that a spreadsheet does not run it as a formula."""
    return "'" + text if text.startswith(_FORMULA_START) else text


@router.get("/api/token-usage/{org_id}/events.csv")
def export_events(
    org_id: RowId,
    request: Request,
    session: Session,
    _viewer: Viewer,
    start: Annotated[AwareDatetime, Query(alias="from")],
    end: Annotated[AwareDatetime, Query(alias="to")],
) -> StreamingResponse:
    org = organizations.get(session, org_id)
    if end <= start:
        raise DomainError(422, "invalid_range", "'to' must be after 'from'")
    filename = f"{org.slug}-events-{start.date()}-{end.date()}.csv"
    return StreamingResponse(
        _csv_rows(get_database(request), org_id, start, end),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.put("/api/token-usage/budget/{license_id}")
def update_budget(
    license_id: RowId, data: BudgetUpdate, session: Session, admin: Admin, settings: AppSettings
) -> dict[str, bool]:
    lic = licenses.get(session, license_id, for_update=True)
    change_budget(session, lic, data, admin, settings.timezone, utcnow())
    return {"ok": True}


@router.get("/api/dashboard/stats")
def dashboard_stats(session: Session, _viewer: Viewer, settings: AppSettings) -> dict[str, Any]:
    return queries.dashboard(session, settings.timezone, utcnow())
