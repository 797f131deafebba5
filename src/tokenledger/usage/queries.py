"""Read side: the figures of the origin's routes and the dashboard, from rollups only."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tokenledger.budgets.service import budget_states, figures_for
from tokenledger.licenses.models import License
from tokenledger.money import format_usd, percent, round_credits, round_usd
from tokenledger.organizations.models import Organization
from tokenledger.usage.models import LicenseUsage, TokenUsageMonthly, UsageDaily
from tokenledger.usage.periods import month_of

M = TokenUsageMonthly


def _number(micro_or_nano: int, unit: int) -> int | float:
    """A JSON number for a configured amount: an int when whole, else the exact decimal."""
    value = Decimal(micro_or_nano) / unit
    return int(value) if value == value.to_integral_value() else float(value)


def _totals_by_org(session: Session) -> dict[int, dict[str, int]]:
    rows = session.execute(
        select(
            M.organization_id,
            func.sum(M.input_tokens),
            func.sum(M.output_tokens),
            func.sum(M.cache_creation_tokens),
            func.sum(M.cache_read_tokens),
            func.sum(M.cost_nano),
            func.sum(M.api_calls),
            func.sum(M.refresh_count),
            func.sum(M.unpriced_events),
        ).group_by(M.organization_id)
    ).all()
    names = (
        "input",
        "output",
        "cache_creation",
        "cache_read",
        "cost",
        "calls",
        "refreshes",
        "unpriced",
    )
    return {row[0]: {n: int(v or 0) for n, v in zip(names, row[1:], strict=True)} for row in rows}


def _active_licenses(session: Session, org_ids: list[int] | None = None) -> dict[int, License]:
    query = select(License).where(License.status == "active")
    if org_ids is not None:
        query = query.where(License.organization_id.in_(org_ids))
    return {lic.organization_id: lic for lic in session.scalars(query)}


def license_columns(lic: License | None, spent_nano: int) -> dict[str, Any]:
    """The origin's license and budget columns, with its rounding."""
    if lic is None:
        return {
            "credits_total": 0,
            "credits_used": 0,
            "credits_remaining": None,
            "credits_percent_used": None,
            "token_budget_usd": None,
            "budget_percent_used": None,
            "budget_warning_percent": 80,
            "cost_per_credit": None,
        }
    total, used = lic.credits_total_micro, lic.credits_used_micro
    budget = lic.token_budget_nano
    return {
        "credits_total": _number(total, 10**6),
        "credits_used": round_credits(used),
        "credits_remaining": max(0, (total - used) // 10**6) if total else None,
        "credits_percent_used": percent(used, total) if total else None,
        "token_budget_usd": _number(budget, 10**9) if budget is not None else None,
        "budget_percent_used": percent(spent_nano, budget) if budget else None,
        "budget_warning_percent": lic.budget_warning_percent,
        "cost_per_credit": _number(lic.cost_per_credit_nano, 10**9),
    }


def overview(session: Session, tz: Any, now: datetime) -> list[dict[str, Any]]:
    """One row per organization (with or without a license), from rollups only."""
    orgs = list(session.scalars(select(Organization).order_by(Organization.name, Organization.id)))
    totals = _totals_by_org(session)
    active = _active_licenses(session)
    figures = figures_for(session, list(active.values()), tz, now)
    # The state is the one /api/v1/budget gives: of the license in force, or suspended.
    states = {s["organization_id"]: s["state"] for s in budget_states(session, orgs, tz, now)}
    month = month_of(now, tz)
    this_month = dict(
        session.execute(select(M.organization_id, M.cost_nano).where(M.year_month == month)).all()
    )
    rows = []
    for org in orgs:
        lic = active.get(org.id)
        sums = totals.get(org.id, defaultdict(int))
        fig = figures.get(lic.id) if lic else None
        rows.append(
            {
                "org_id": org.id,
                "org_name": org.name,
                "org_slug": org.slug,
                **license_columns(lic, fig.spent_nano if fig else 0),
                "total_cost_usd": round_usd(sums["cost"]),
                "total_input_tokens": sums["input"],
                "total_output_tokens": sums["output"],
                "total_api_calls": sums["calls"],
                "total_refreshes": sums["refreshes"],
                # Additions to the origin's fields:
                "total_cache_creation_tokens": sums["cache_creation"],
                "total_cache_read_tokens": sums["cache_read"],
                "cost_this_month_usd": round_usd(int(this_month.get(org.id) or 0)),
                "unpriced_events": sums["unpriced"],
                "license_id": lic.id if lic else None,
                "budget_period": lic.budget_period if lic else None,
                "state": states[org.id],
                "archived": org.archived_at is not None,
            }
        )
    return rows


def monthly(session: Session, org_id: int) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(M).where(M.organization_id == org_id).order_by(M.year_month.desc())
    )
    return [
        {
            "year_month": row.year_month,
            "input_tokens": row.input_tokens,
            "output_tokens": row.output_tokens,
            "cache_creation_tokens": row.cache_creation_tokens,
            "cache_read_tokens": row.cache_read_tokens,
            "total_cost_usd": round_usd(row.cost_nano),
            "api_calls": row.api_calls,
            "refresh_count": row.refresh_count,
            "unpriced_events": row.unpriced_events,
        }
        for row in rows
    ]


def current(session: Session, org: Organization, tz: Any, now: datetime) -> dict[str, Any]:
    month = month_of(now, tz)
    usage = session.get(M, (org.id, month))
    lic = _active_licenses(session, [org.id]).get(org.id)
    state = budget_states(session, [org], tz, now)[0]
    fig = figures_for(session, [lic], tz, now)[lic.id] if lic else None
    columns = license_columns(lic, fig.spent_nano if fig else 0)
    return {
        "year_month": month,
        "usage": {
            "input_tokens": usage.input_tokens if usage else 0,
            "output_tokens": usage.output_tokens if usage else 0,
            "cache_creation_tokens": usage.cache_creation_tokens if usage else 0,
            "cache_read_tokens": usage.cache_read_tokens if usage else 0,
            "total_cost_usd": round_usd(usage.cost_nano) if usage else 0,
            "api_calls": usage.api_calls if usage else 0,
            "refresh_count": usage.refresh_count if usage else 0,
        },
        "budget": {
            "credits_total": columns["credits_total"] if lic else None,
            "credits_used": columns["credits_used"],
            "credits_remaining": columns["credits_remaining"],
            "credits_percent_used": columns["credits_percent_used"],
            "token_budget_usd": columns["token_budget_usd"],
            "cost_per_credit": columns["cost_per_credit"],
            "budget_warning_percent": columns["budget_warning_percent"],
            "budget_percent_used": columns["budget_percent_used"],
            "budget_period": lic.budget_period if lic else None,
            "spent_usd": round_usd(fig.spent_nano) if fig else None,
            "state": state["state"],
            "allowed": state["allowed"],
            "license_id": lic.id if lic else None,
        },
    }


def models_of_month(session: Session, org_id: int, year_month: str) -> list[dict[str, Any]]:
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
            "total_cost_usd": round_usd(int(cost)),
            "cost_usd": format_usd(int(cost)),
            "api_calls": int(calls),
            "events": int(events),
            "unpriced_events": int(unpriced),
        }
        for provider, model, inp, out, cc, cr, cost, calls, events, unpriced in rows
    ]


def daily_series(
    session: Session, org_id: int, days: int, tz: Any, now: datetime
) -> list[dict[str, Any]]:
    """The last `days` billing days, oldest first, with zeros for days without usage."""
    D = UsageDaily
    # Calendar days counted back from today's date: 24-hour steps skip or repeat a day
    # around a daylight-saving change.
    today = now.astimezone(tz).date()
    series_days = [(today - timedelta(days=offset)).isoformat() for offset in range(days)][::-1]
    first = series_days[0]
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
            .where(D.organization_id == org_id, D.day >= first)
            .group_by(D.day)
        )
    }
    series = []
    for day in series_days:
        cost, calls, inp, out = sums.get(day, (0, 0, 0, 0))
        series.append(
            {
                "day": day,
                "total_cost_usd": round_usd(cost),
                "api_calls": calls,
                "input_tokens": inp,
                "output_tokens": out,
            }
        )
    return series


def dashboard(session: Session, tz: Any, now: datetime) -> dict[str, Any]:
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
    sold_micro = sum(lic.credits_total_micro for lic in active)
    used_micro = sum(lic.credits_used_micro for lic in active)
    # Revenue of the credits sold (at each license's price per credit), and what was consumed.
    sold_value_nano = sum(
        lic.credits_total_micro * lic.cost_per_credit_nano // 10**6 for lic in active
    )
    consumed_value_nano = sum(
        lic.credits_used_micro * lic.cost_per_credit_nano // 10**6 for lic in active
    )
    provider_cost_nano = sum(int(spend.get(lic.id) or 0) for lic in active)
    return {
        "total_cost_usd": round_usd(int(total_cost)),
        "cost_this_month_usd": round_usd(int(month_cost or 0)),
        "year_month": month,
        "organizations": len(orgs),
        "active_licenses": len(active),
        "organizations_ok": sum(1 for s in states if s["state"] == "ok"),
        "organizations_warning": sum(1 for s in states if s["state"] == "warning"),
        "organizations_exhausted": sum(1 for s in states if s["state"] == "exhausted"),
        "organizations_without_license": sum(1 for s in states if s["state"] == "no_license"),
        "unpriced_events": int(unpriced),
        "credits_sold": round_credits(sold_micro),
        "credits_consumed": round_credits(used_micro),
        "credits_sold_value_usd": round_usd(sold_value_nano),
        "credits_consumed_value_usd": round_usd(consumed_value_nano),
        "provider_cost_usd": round_usd(provider_cost_nano),
        "margin_usd": round_usd(sold_value_nano - provider_cost_nano),
    }
