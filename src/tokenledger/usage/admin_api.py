"""Admin routes of the origin (/api/token-usage/...), plus breakdowns, export, dashboard."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import TypeAdapter

from tokenledger.deps import AppSettings, Now, RowId, Session, Viewer, get_database, get_hot
from tokenledger.errors import DomainError
from tokenledger.organizations import service as organizations
from tokenledger.periods import month_of
from tokenledger.schemas import MONTH_PATTERN, RANGE_RULE, Instant
from tokenledger.usage import answers, export, queries
from tokenledger.usage.export import ClosingStreamingResponse

router = APIRouter(tags=["token-usage"])


OverviewRows = list[dict[str, Any]]
_OVERVIEW_JSON = TypeAdapter(OverviewRows)


@router.get("/api/token-usage/overview", response_model=OverviewRows)
def usage_overview(
    request: Request, session: Session, _viewer: Viewer, settings: AppSettings, now: Now
) -> Response:
    # The licenses in force from memory, as the budget check reads them. A row per
    # organization (thousands): written to JSON as they are, without validating plain
    # values against a schema of Any first.
    licenses = get_hot(request).all_licenses()
    rows = answers.overview_json(
        queries.organization_rows(session, settings.timezone, now, licenses)
    )
    return Response(_OVERVIEW_JSON.dump_json(rows), media_type="application/json")


@router.get("/api/token-usage/{org_id}")
def organization_usage(
    org_id: RowId, session: Session, _viewer: Viewer, settings: AppSettings
) -> list[dict[str, Any]]:
    organizations.get(session, org_id)
    return answers.monthly_json(queries.monthly(session, org_id, settings.timezone))


@router.get("/api/token-usage/{org_id}/current")
def organization_current(
    org_id: RowId, session: Session, _viewer: Viewer, settings: AppSettings, now: Now
) -> dict[str, Any]:
    org = organizations.get(session, org_id)
    return answers.current_json(queries.current(session, org, settings.timezone, now))


@router.get("/api/token-usage/{org_id}/models")
def organization_models(
    org_id: RowId,
    session: Session,
    _viewer: Viewer,
    settings: AppSettings,
    now: Now,
    month: Annotated[str | None, Query(pattern=MONTH_PATTERN)] = None,
) -> dict[str, Any]:
    organizations.get(session, org_id)
    year_month = month or month_of(now, settings.timezone)
    return {
        "year_month": year_month,
        "models": answers.models_json(queries.model_sums(session, org_id, year_month)),
    }


@router.get("/api/token-usage/{org_id}/daily")
def organization_daily(
    org_id: RowId,
    session: Session,
    _viewer: Viewer,
    settings: AppSettings,
    now: Now,
    days: Annotated[int, Query(ge=1, le=366)] = 30,
) -> list[dict[str, Any]]:
    organizations.get(session, org_id)
    return answers.daily_json(queries.daily_series(session, org_id, days, settings.timezone, now))


@router.get(
    "/api/token-usage/{org_id}/events.csv",
    response_class=ClosingStreamingResponse,
    status_code=200,
    responses={
        200: {
            "description": "The events, oldest first, as CSV with a header row.",
            "content": {"text/csv": {"schema": {"type": "string"}}},
        }
    },
)
def export_events(
    org_id: RowId,
    request: Request,
    session: Session,
    _viewer: Viewer,
    start: Annotated[Instant, Query(alias="from", description=f"first instant; {RANGE_RULE}")],
    end: Annotated[Instant, Query(alias="to", description=f"end, exclusive; {RANGE_RULE}")],
) -> ClosingStreamingResponse:
    org = organizations.get(session, org_id)
    if end <= start:
        raise DomainError(422, "invalid_range", "'to' must be after 'from'")
    filename = f"{org.slug}-events-{start.date()}-{end.date()}.csv"
    return ClosingStreamingResponse(
        export.csv_chunks(get_database(request), org_id, start, end),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get("/api/dashboard/stats")
def dashboard_stats(
    session: Session, _viewer: Viewer, settings: AppSettings, now: Now
) -> dict[str, Any]:
    return answers.dashboard_json(queries.dashboard_figures(session, settings.timezone, now))
