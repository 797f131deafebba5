"""Read side: the figures of the origin's routes and the dashboard, from rollups only."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, case, func, literal, select
from sqlalchemy.orm import Session

from tokenledger.budgets.service import (
    Figures,
    Reader,
    budget_states,
    burn_forecast,
    figures_and_windows,
    figures_for,
    governing,
)
from tokenledger.licenses.models import License, LicenseTerms
from tokenledger.licenses.service import terms_in_force
from tokenledger.money import credits_value_nano, percent
from tokenledger.organizations.models import Organization
from tokenledger.periods import month_bounds, month_of
from tokenledger.usage.models import (
    LicenseUsage,
    Refresh,
    TokenUsageMonthly,
    UsageDaily,
    UsageEvent,
    UsagePrice,
)

M = TokenUsageMonthly


# The sums of an organization's monthly rollups that the overview shows, by name.
_TOTALS = (
    ("input", func.sum(M.input_tokens)),
    ("output", func.sum(M.output_tokens)),
    ("cache_creation", func.sum(M.cache_creation_tokens)),
    ("cache_read", func.sum(M.cache_read_tokens)),
    ("cost", func.sum(M.cost_nano)),
    ("calls", func.sum(M.api_calls)),
    ("refreshes", func.sum(M.refresh_count)),
    ("unpriced", func.sum(M.unpriced_events)),
    ("month_cost", func.sum(case((M.year_month == bindparam("month"), M.cost_nano), else_=0))),
)
_TOTALS_BY_ORG = select(M.organization_id, *(column for _name, column in _TOTALS)).group_by(
    M.organization_id
)


def _totals_by_org(reader: Reader, month: str) -> dict[int, dict[str, int]]:
    """Every organization's sums over all months, and its cost in `month`, in one query."""
    names = [name for name, _column in _TOTALS]
    return {
        row[0]: {name: int(value or 0) for name, value in zip(names, row[1:], strict=True)}
        for row in reader.execute(_TOTALS_BY_ORG, {"month": month})
    }


def _active_licenses(session: Session, org_ids: list[int] | None = None) -> dict[int, License]:
    query = select(License).where(License.status == "active")
    if org_ids is not None:
        query = query.where(License.organization_id.in_(org_ids))
    return {lic.organization_id: lic for lic in session.scalars(query)}


@dataclass(frozen=True, slots=True)
class OrganizationSummary:
    """What the overview and the organization list show of an organization itself."""

    id: int
    name: str
    slug: str
    archived_at: datetime | None


_ORGANIZATIONS = select(
    Organization.id, Organization.name, Organization.slug, Organization.archived_at
).order_by(Organization.name, Organization.id)


@dataclass(slots=True)
class OrganizationRow:
    """One organization's figures in integer units: what the overview and the UI show."""

    org: OrganizationSummary
    license: LicenseTerms | None
    figures: Figures | None
    totals: dict[str, int]
    cost_this_month_nano: int
    state: str
    forecast: dict[str, Any] | None = None
    runs_out_this_period: bool = False

    @property
    def percent_used(self) -> float | None:
        """The higher of credits and budget used, in percent (None without any limit)."""
        fig = self.figures
        if fig is None:
            return None
        found = [
            percent(used, limit)
            for used, limit in (
                (fig.credits_used_micro, fig.credit_limit),
                (fig.spent_nano, fig.usd_limit),
            )
            if limit
        ]
        values = [value for value in found if value is not None]
        return max(values) if values else None


def _runs_out_this_period(fig: Figures, forecast: dict[str, Any], tz: Any, now: datetime) -> bool:
    """At the recent pace, the budget runs out before its period ends, or the credits this month.

    Not when it has run out already: that is the exhausted state, not a projection.
    """
    if fig.state() == "exhausted":
        return False
    if forecast["budget_exhausted_before_period_end"]:
        return True
    credits_at = forecast["credits_exhausted_at"]
    if credits_at is None or fig.credit_limit is None:
        return False
    _start, month_end = month_bounds(month_of(now, tz), tz)
    return datetime.fromisoformat(credits_at) < month_end


def organization_rows(
    session: Session,
    tz: Any,
    now: datetime,
    licenses: Mapping[int, Sequence[LicenseTerms]] | None = None,
) -> list[OrganizationRow]:
    """One row per organization (with or without a license), from rollups only: three or
    four queries whatever the number of organizations, no ORM objects.

    `licenses`: every organization's active and suspended licenses, newest first, when the
    caller has them (from memory: HotReads.all_licenses); else they are read here.
    """
    month = month_of(now, tz)
    # Plain statements on the session's connection: rows as they come, no ORM loading.
    reader = session.connection()
    orgs = [OrganizationSummary(*row) for row in reader.execute(_ORGANIZATIONS)]
    totals = _totals_by_org(reader, month)
    # Active and suspended licenses, read once: the active one's columns, and the state
    # /api/v1/budget gives (of the license in force, or suspended), from the same figures.
    held = licenses if licenses is not None else terms_in_force(reader)
    active = {
        org_id: one for org_id, found in held.items() for one in found if one.status == "active"
    }
    in_force = {org.id: governing(held.get(org.id, ()), now) for org in orgs}
    wanted = {one.id: one for one in active.values()}
    wanted.update({one.id: one for one, _ in in_force.values() if one is not None})
    # With each organization's cost over the forecast window.
    found = figures_and_windows(reader, list(wanted.values()), tz, now)
    rows = []
    for org in orgs:
        governing_license, suspended = in_force[org.id]
        if governing_license is None:
            state = "suspended" if suspended else "no_license"
        else:
            state = found[governing_license.id][0].state()
        lic = active.get(org.id)
        fig, window = found.get(lic.id, (None, 0)) if lic else (None, 0)
        sums = totals.get(org.id, {})
        row = OrganizationRow(
            org=org,
            license=lic,
            figures=fig,
            totals=sums,
            cost_this_month_nano=sums.get("month_cost", 0),
            state=state,
        )
        if fig is not None:
            row.forecast = burn_forecast(fig, window, tz, now)
            row.runs_out_this_period = _runs_out_this_period(fig, row.forecast, tz, now)
        rows.append(row)
    return rows


def failed_runs_by_month(session: Session, org_id: int, tz: Any) -> dict[str, int]:
    """Failed runs of an organization per billing month of their end (they were paid for)."""
    counts: dict[str, int] = defaultdict(int)
    for (finished_at,) in session.execute(
        select(Refresh.finished_at).where(
            Refresh.organization_id == org_id,
            # Written out, not bound: the partial index of failed runs applies (a planner
            # cannot tell that a bound value matches its condition).
            Refresh.status == literal("failed", literal_execute=True),
            Refresh.finished_at.is_not(None),
        )
    ):
        if finished_at is not None:
            counts[month_of(finished_at, tz)] += 1
    return dict(counts)


def monthly(session: Session, org_id: int, tz: Any = None) -> list[dict[str, Any]]:
    """The monthly rollups, newest first, cost in nano-USD; with a time zone also the
    failed runs (None when not counted). usage.answers.monthly_json renders the origin's."""
    rows = session.execute(
        select(
            M.year_month,
            M.input_tokens,
            M.output_tokens,
            M.cache_creation_tokens,
            M.cache_read_tokens,
            M.cost_nano,
            M.api_calls,
            M.refresh_count,
            M.unpriced_events,
        )
        .where(M.organization_id == org_id)
        .order_by(M.year_month.desc())
    )
    failed = failed_runs_by_month(session, org_id, tz) if tz is not None else {}
    return [
        {
            "year_month": row.year_month,
            "input_tokens": row.input_tokens,
            "output_tokens": row.output_tokens,
            "cache_creation_tokens": row.cache_creation_tokens,
            "cache_read_tokens": row.cache_read_tokens,
            "cost_nano": row.cost_nano,
            "api_calls": row.api_calls,
            "refresh_count": row.refresh_count,
            "unpriced_events": row.unpriced_events,
            "failed_refreshes": failed.get(row.year_month, 0) if tz is not None else None,
        }
        for row in rows
    ]


@dataclass(frozen=True, slots=True)
class Current:
    """An organization's month now: its rollup row, license, figures and budget state."""

    year_month: str
    usage: TokenUsageMonthly | None
    license: LicenseTerms | None
    figures: Figures | None
    state: dict[str, Any]


def current(session: Session, org: Organization, tz: Any, now: datetime) -> Current:
    month = month_of(now, tz)
    lic = _active_licenses(session, [org.id]).get(org.id)
    return Current(
        year_month=month,
        usage=session.get(M, (org.id, month)),
        license=lic,
        figures=figures_for(session, [lic], tz, now)[lic.id] if lic else None,
        state=budget_states(session, [org], tz, now)[0],
    )


def model_sums(session: Session, org_id: int, year_month: str) -> list[dict[str, Any]]:
    """Each model's tokens, cost (integer nano-USD) and counts in a month, costliest first."""
    D = UsageDaily
    rows = session.execute(
        select(
            D.provider,
            D.model,
            func.sum(D.input_tokens),
            func.sum(D.output_tokens),
            func.sum(D.cache_creation_tokens),
            func.sum(D.cache_read_tokens),
            func.sum(D.cost_nano),
            func.sum(D.api_calls),
            func.sum(D.event_count),
            func.sum(D.unpriced_events),
        )
        .where(D.organization_id == org_id, D.day.startswith(year_month))
        .group_by(D.provider, D.model)
        .order_by(func.sum(D.cost_nano).desc(), D.model)
    ).all()
    return [
        {
            "provider": provider,
            "model": model,
            "input_tokens": int(inp),
            "output_tokens": int(out),
            "cache_creation_tokens": int(cc),
            "cache_read_tokens": int(cr),
            "cost_nano": int(cost),
            "api_calls": int(calls),
            "events": int(events),
            "unpriced_events": int(unpriced),
        }
        for provider, model, inp, out, cc, cr, cost, calls, events, unpriced in rows
    ]


def days_of_month(year_month: str) -> list[str]:
    year, month = (int(part) for part in year_month.split("-"))
    first = date(year, month, 1)
    following = date(year + (month == 12), month % 12 + 1, 1)
    return [(first + timedelta(days=n)).isoformat() for n in range((following - first).days)]


def daily_for_days(session: Session, org_id: int, days: list[str]) -> list[dict[str, Any]]:
    """Sums per billing day for these days (ascending), with zeros for days without usage;
    cost in nano-USD (usage.answers.daily_json renders the origin's)."""
    D = UsageDaily
    sums = {
        day: (int(cost), int(calls), int(inp), int(out))
        for day, cost, calls, inp, out in session.execute(
            select(
                D.day,
                func.sum(D.cost_nano),
                func.sum(D.api_calls),
                func.sum(D.input_tokens),
                func.sum(D.output_tokens),
            )
            .where(D.organization_id == org_id, D.day >= days[0], D.day <= days[-1])
            .group_by(D.day)
        )
    }
    series = []
    for day in days:
        cost, calls, inp, out = sums.get(day, (0, 0, 0, 0))
        series.append(
            {
                "day": day,
                "cost_nano": cost,
                "api_calls": calls,
                "input_tokens": inp,
                "output_tokens": out,
            }
        )
    return series


def daily_series(
    session: Session, org_id: int, days: int, tz: Any, now: datetime
) -> list[dict[str, Any]]:
    """The last `days` billing days, oldest first, with zeros for days without usage."""
    # Calendar days counted back from today's date: 24-hour steps skip or repeat a day
    # around a daylight-saving change.
    today = now.astimezone(tz).date()
    series_days = [(today - timedelta(days=offset)).isoformat() for offset in range(days)][::-1]
    return daily_for_days(session, org_id, series_days)


def monthly_costs(session: Session) -> list[tuple[str, int]]:
    """Cost of all organizations per billing month, oldest first, in nano-USD."""
    rows = session.execute(
        select(M.year_month, func.sum(M.cost_nano)).group_by(M.year_month).order_by(M.year_month)
    ).all()
    return [(year_month, int(cost or 0)) for year_month, cost in rows]


@dataclass(slots=True)
class DashboardFigures:
    """The dashboard's figures in integer units."""

    year_month: str
    total_cost_nano: int
    month_cost_nano: int
    organizations: int
    active_licenses: int
    states: dict[str, int]
    unpriced_events: int
    credits_sold_micro: int
    credits_consumed_micro: int
    sold_value_nano: int
    consumed_value_nano: int
    provider_cost_nano: int
    months: list[tuple[str, int]] = field(default_factory=list)

    @property
    def margin_nano(self) -> int:
        return self.sold_value_nano - self.provider_cost_nano


def dashboard_figures(session: Session, tz: Any, now: datetime) -> DashboardFigures:
    month = month_of(now, tz)
    total_cost, unpriced = session.execute(
        select(
            func.coalesce(func.sum(M.cost_nano), 0), func.coalesce(func.sum(M.unpriced_events), 0)
        )
    ).one()
    month_cost = session.scalar(
        select(func.coalesce(func.sum(M.cost_nano), 0)).where(M.year_month == month)
    )
    orgs = list(session.scalars(select(Organization).where(Organization.archived_at.is_(None))))
    states = budget_states(session, orgs, tz, now)
    active = list(_active_licenses(session).values())
    spend = (
        dict(
            session.execute(
                select(LicenseUsage.license_id, func.sum(LicenseUsage.cost_nano))
                .where(LicenseUsage.license_id.in_([lic.id for lic in active]))
                .group_by(LicenseUsage.license_id)
            ).all()
        )
        if active
        else {}
    )
    counts: dict[str, int] = defaultdict(int)
    for state in states:
        counts[state["state"]] += 1
    return DashboardFigures(
        year_month=month,
        total_cost_nano=int(total_cost),
        month_cost_nano=int(month_cost or 0),
        organizations=len(orgs),
        active_licenses=len(active),
        states=dict(counts),
        unpriced_events=int(unpriced),
        credits_sold_micro=sum(lic.credits_total_micro for lic in active),
        credits_consumed_micro=sum(lic.credits_used_micro for lic in active),
        # Revenue of the credits sold (at each license's price per credit), and consumed.
        sold_value_nano=sum(
            credits_value_nano(lic.credits_total_micro, lic.cost_per_credit_nano) for lic in active
        ),
        consumed_value_nano=sum(
            credits_value_nano(lic.credits_used_micro, lic.cost_per_credit_nano) for lic in active
        ),
        provider_cost_nano=sum(int(spend.get(lic.id) or 0) for lic in active),
        months=monthly_costs(session),
    )


def recent_events(
    session: Session, org_id: int | None = None, limit: int = 50
) -> list[tuple[UsageEvent, UsagePrice]]:
    """The newest events (of one organization), each with the price row it was written with."""
    query = (
        select(UsageEvent, UsagePrice)
        .join(UsagePrice, UsagePrice.id == UsageEvent.price_id)
        .order_by(UsageEvent.timestamp.desc(), UsageEvent.id.desc())
    )
    if org_id is not None:
        query = query.where(UsageEvent.organization_id == org_id)
    return [(event, price) for event, price in session.execute(query.limit(limit)).all()]
