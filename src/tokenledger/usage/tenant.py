"""What a tenant sees of its own organization: one dataset for the tenant API and the
portal, from the services the admin routes and pages use (budgets.service, usage.queries).

Nothing here reads another organization, an admin, a key, a webhook or the audit log.
With the operator's tenant_show_usd off, every USD figure (provider cost, the USD budget)
is left out: null in the summary, absent from the rows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from tokenledger import schemas
from tokenledger.budgets.service import OrgLike, Reader, budget_states
from tokenledger.config import Settings
from tokenledger.errors import DomainError
from tokenledger.licenses.models import LicenseTerms
from tokenledger.licenses.service import terms_in_force
from tokenledger.organizations.models import Organization
from tokenledger.periods import month_bounds, month_of
from tokenledger.usage import queries
from tokenledger.usage.answers import daily_json, models_json, monthly_json
from tokenledger.usage.export import COLUMNS

# A billing month a tenant may ask for: one of the range of instants (schemas.py).
MONTH_PATTERN = schemas.MONTH_PATTERN
_MONTH = re.compile(MONTH_PATTERN)
# The USD fields of the rows (provider cost) and of the summary and its forecast.
_ROW_USD = frozenset({"total_cost_usd", "cost_usd"})
_SUMMARY_USD = ("token_budget_usd", "spent_usd", "reserved_usd", "remaining_usd")
_FORECAST_USD = (
    "usd_per_day",
    "budget_exhausted_at",
    "projected_spent_usd",
    "period_end",
)


def check_month(month: str) -> str:
    if not _MONTH.fullmatch(month):
        raise DomainError(422, "invalid_month", "month must be YYYY-MM (1970 to 9998)")
    return month


def _rows(rows: list[dict[str, Any]], show_usd: bool) -> list[dict[str, Any]]:
    if show_usd:
        return rows
    return [{key: value for key, value in row.items() if key not in _ROW_USD} for row in rows]


def summary(
    reader: Reader,
    org: OrgLike,
    settings: Settings,
    now: datetime,
    licenses: Mapping[int, Sequence[LicenseTerms]] | None = None,
) -> dict[str, Any]:
    """The current period's credits and budget: the budget state /api/v1/budget gives (with
    its forecast), and the bounds of the period each limit is counted in.

    `licenses`: the organization's active and suspended licenses (newest first) when the
    caller has them in memory, as for budget_states.
    """
    tz = settings.timezone
    if licenses is None:
        licenses = terms_in_force(reader, [org.id])
    state = budget_states(reader, [org], tz, now, forecast=True, licenses=licenses)[0]
    lic = next((one for one in licenses.get(org.id, ()) if one.id == state["license_id"]), None)
    start = end = None
    if lic is not None:
        if lic.budget_period == "monthly":
            start, end = month_bounds(month_of(now, tz), tz)
        else:
            start, end = lic.valid_from, lic.valid_until
    forecast = state["forecast"]
    result: dict[str, Any] = {
        "organization": org.slug,
        "timezone": settings.billing_timezone,
        "state": state["state"],
        "allowed": state["allowed"],
        "license_id": state["license_id"],
        "enforcement": state["enforcement"],
        "budget_period": state["budget_period"],
        "period": state["period"],
        "period_start": start.isoformat() if start else None,
        "period_end": end.isoformat() if end else None,
        "license_valid_from": lic.valid_from.isoformat() if lic else None,
        "license_valid_until": lic.valid_until.isoformat() if lic and lic.valid_until else None,
        "credits_total": state["credits_total"],
        "credits_used": state["credits_used"],
        "credits_reserved": state["credits_reserved"],
        "credits_remaining": state["credits_remaining"],
        **{name: state[name] for name in _SUMMARY_USD},
        "forecast": dict(forecast) if forecast is not None else None,
        "show_usd": settings.tenant_show_usd,
    }
    if not settings.tenant_show_usd:
        result.update(dict.fromkeys(_SUMMARY_USD))
        if result["forecast"] is not None:
            result["forecast"].update(dict.fromkeys(_FORECAST_USD))
            result["forecast"]["budget_exhausted_before_period_end"] = False
    return result


def monthly(session: Session, org: Organization, settings: Settings) -> list[dict[str, Any]]:
    """The token-usage tab's monthly table (GET /api/token-usage/{id}), newest first."""
    rows = monthly_json(queries.monthly(session, org.id, settings.timezone))
    return _rows(rows, settings.tenant_show_usd)


def models(session: Session, org: Organization, settings: Settings, month: str) -> dict[str, Any]:
    """Per model in a month (GET /api/token-usage/{id}/models?month=)."""
    rows = models_json(queries.model_sums(session, org.id, check_month(month)))
    return {"year_month": month, "models": _rows(rows, settings.tenant_show_usd)}


def daily(session: Session, org: Organization, settings: Settings, month: str) -> dict[str, Any]:
    """Per billing day of a month, zeros included (the token-usage tab's daily chart)."""
    days = queries.days_of_month(check_month(month))
    rows = daily_json(queries.daily_for_days(session, org.id, days))
    return {"year_month": month, "days": _rows(rows, settings.tenant_show_usd)}


def csv_columns(settings: Settings) -> tuple[str, ...]:
    """The columns of a tenant's CSV export: without the cost when USD is not shown."""
    return COLUMNS if settings.tenant_show_usd else tuple(c for c in COLUMNS if c != "cost_usd")
