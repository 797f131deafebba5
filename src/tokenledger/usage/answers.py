"""What the usage read routes answer: the integer rows and figures of usage.queries
rendered as the origin's JSON (its fields, its order, its rounding: money.round_usd and
round_credits as numbers, format_usd as exact text). Queries hand on integers; this module
and the templates are where amounts become numbers and text."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any

from tokenledger.budgets.service import Figures
from tokenledger.licenses.models import LicenseTerms
from tokenledger.money import format_usd, percent, round_credits, round_usd
from tokenledger.usage.queries import Current, DashboardFigures, OrganizationRow


def _number(micro_or_nano: int, unit: int) -> int | float:
    """A JSON number for a configured amount: an int when whole, else the exact decimal."""
    whole, rest = divmod(micro_or_nano, unit)
    return whole if not rest else float(Decimal(micro_or_nano) / unit)


def license_columns(lic: LicenseTerms | None, fig: Figures | None) -> dict[str, Any]:
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
    total = lic.credits_total_micro
    used, spent_nano = (fig.credits_used_micro, fig.spent_nano) if fig else (0, 0)
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


def overview_json(rows: list[OrganizationRow]) -> list[dict[str, Any]]:
    """The origin's overview rows (GET /api/token-usage/overview), with additions."""
    rendered = []
    for row in rows:
        sums: dict[str, int] = defaultdict(int, row.totals)
        lic, fig = row.license, row.figures
        rendered.append(
            {
                "org_id": row.org.id,
                "org_name": row.org.name,
                "org_slug": row.org.slug,
                **license_columns(lic, fig),
                "total_cost_usd": round_usd(sums["cost"]),
                "total_input_tokens": sums["input"],
                "total_output_tokens": sums["output"],
                "total_api_calls": sums["calls"],
                "total_refreshes": sums["refreshes"],
                # Additions to the origin's fields:
                "total_cache_creation_tokens": sums["cache_creation"],
                "total_cache_read_tokens": sums["cache_read"],
                "cost_this_month_usd": round_usd(row.cost_this_month_nano),
                "unpriced_events": sums["unpriced"],
                "license_id": lic.id if lic else None,
                "budget_period": lic.budget_period if lic else None,
                "state": row.state,
                "archived": row.org.archived_at is not None,
                "forecast": row.forecast,
                "runs_out_this_period": row.runs_out_this_period,
            }
        )
    return rendered


def current_json(current: Current) -> dict[str, Any]:
    """The origin's current month (GET /api/token-usage/{id}/current)."""
    usage, lic, fig, state = current.usage, current.license, current.figures, current.state
    columns = license_columns(lic, fig)
    return {
        "year_month": current.year_month,
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


def dashboard_json(fig: DashboardFigures) -> dict[str, Any]:
    """The origin's dashboard (GET /api/dashboard/stats), with additions."""
    return {
        "total_cost_usd": round_usd(fig.total_cost_nano),
        "cost_this_month_usd": round_usd(fig.month_cost_nano),
        "year_month": fig.year_month,
        "organizations": fig.organizations,
        "active_licenses": fig.active_licenses,
        "organizations_ok": fig.states.get("ok", 0),
        "organizations_warning": fig.states.get("warning", 0),
        "organizations_exhausted": fig.states.get("exhausted", 0),
        "organizations_without_license": fig.states.get("no_license", 0),
        "unpriced_events": fig.unpriced_events,
        "credits_sold": round_credits(fig.credits_sold_micro),
        "credits_consumed": round_credits(fig.credits_consumed_micro),
        "credits_sold_value_usd": round_usd(fig.sold_value_nano),
        "credits_consumed_value_usd": round_usd(fig.consumed_value_nano),
        "provider_cost_usd": round_usd(fig.provider_cost_nano),
        "margin_usd": round_usd(fig.margin_nano),
        # Additions: exact figures, and the cost of every month (all organizations).
        "total_cost": format_usd(fig.total_cost_nano),
        "months": [
            {"year_month": year_month, "cost_usd": format_usd(cost)}
            for year_month, cost in fig.months
        ],
    }


# The origin's rows (GET /api/token-usage/{id}, /models, /daily and the tenant's): each
# cost of usage.queries' integer rows as a rounded number (total_cost_usd, the origin's
# field) and as exact text (cost_usd), in the origin's order of fields.


def monthly_json(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "year_month": row["year_month"],
            "input_tokens": row["input_tokens"],
            "output_tokens": row["output_tokens"],
            "cache_creation_tokens": row["cache_creation_tokens"],
            "cache_read_tokens": row["cache_read_tokens"],
            "total_cost_usd": round_usd(row["cost_nano"]),
            "api_calls": row["api_calls"],
            "refresh_count": row["refresh_count"],
            "unpriced_events": row["unpriced_events"],
            "cost_usd": format_usd(row["cost_nano"]),
            "failed_refreshes": row["failed_refreshes"],
        }
        for row in rows
    ]


def models_json(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "provider": row["provider"],
            "model": row["model"],
            "input_tokens": row["input_tokens"],
            "output_tokens": row["output_tokens"],
            "cache_creation_tokens": row["cache_creation_tokens"],
            "cache_read_tokens": row["cache_read_tokens"],
            "total_cost_usd": round_usd(row["cost_nano"]),
            "cost_usd": format_usd(row["cost_nano"]),
            "api_calls": row["api_calls"],
            "events": row["events"],
            "unpriced_events": row["unpriced_events"],
        }
        for row in rows
    ]


def daily_json(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "day": row["day"],
            "total_cost_usd": round_usd(row["cost_nano"]),
            "cost_usd": format_usd(row["cost_nano"]),
            "api_calls": row["api_calls"],
            "input_tokens": row["input_tokens"],
            "output_tokens": row["output_tokens"],
        }
        for row in rows
    ]
