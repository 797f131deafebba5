"""The comparison's shapes: one dataset (service.compare) rendered as the JSON of
GET /api/provider-reports/comparison and, as the same dicts, the Provider bill page."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tokenledger.money import format_usd
from tokenledger.provider_reports import service
from tokenledger.provider_reports.models import TOKEN_KINDS


class SideRead(BaseModel):
    uncached_input_tokens: int
    cache_write_5m_tokens: int
    cache_write_1h_tokens: int
    cache_read_tokens: int
    output_tokens: int
    # None on the ledger's side: it keeps no count of web searches to compare.
    web_search_requests: int | None
    cost_usd: str
    unpriced_events: int | None


class ComparisonRowRead(BaseModel):
    day: str
    model: str
    partial: bool
    provider: SideRead
    ledger: SideRead
    # ledger / provider per kind, 4 places (None where the provider counted none).
    coverage: dict[str, str | None]
    drift_usd: str
    drift_percent: str | None


class DayRead(BaseModel):
    day: str
    partial: bool
    provider_cost_usd: str
    ledger_cost_usd: str
    drift_usd: str
    drift_percent: str | None


class ComparisonRead(BaseModel):
    provider: str
    from_: date = Field(alias="from")
    to: date
    organization_id: int | None
    timezone: str = "UTC"
    provider_cost_usd: str
    ledger_cost_usd: str
    drift_usd: str
    drift_percent: str | None
    days: list[DayRead]
    rows: list[ComparisonRowRead]

    model_config = ConfigDict(populate_by_name=True)


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _side(side: service.Side, ledger: bool) -> dict[str, Any]:
    figures: dict[str, Any] = dict(side.tokens)
    if ledger:
        figures["web_search_requests"] = None
    figures["cost_usd"] = format_usd(side.cost_nano)
    figures["unpriced_events"] = side.unpriced_events if ledger else None
    return figures


def _coverage(row: service.ComparisonRow) -> dict[str, str | None]:
    coverage = {
        kind: _text(service.ratio(row.ledger.tokens[kind], row.provider.tokens[kind]))
        for kind in service.LEDGER_KINDS
    }
    coverage["cost_usd"] = _text(service.ratio(row.ledger.cost_nano, row.provider.cost_nano))
    return coverage


def comparison_body(result: service.Comparison) -> dict[str, Any]:
    """One dataset, rendered as JSON by the route and as the Provider bill page.

    Plain dicts in ComparisonRead's shape: a year is 7,300 rows, and building them as
    pydantic models took most of the answer's time.
    """
    drift = result.provider_nano - result.ledger_nano
    return {
        "provider": result.provider,
        "from": result.first.isoformat(),
        "to": result.last.isoformat(),
        "organization_id": result.organization_id,
        "timezone": "UTC",
        "provider_cost_usd": format_usd(result.provider_nano),
        "ledger_cost_usd": format_usd(result.ledger_nano),
        "drift_usd": format_usd(drift),
        "drift_percent": _text(service.drift_percent(drift, result.provider_nano)),
        "days": [
            {
                "day": day.day,
                "partial": day.partial,
                "provider_cost_usd": format_usd(day.provider_nano),
                "ledger_cost_usd": format_usd(day.ledger_nano),
                "drift_usd": format_usd(day.drift_nano),
                "drift_percent": _text(service.drift_percent(day.drift_nano, day.provider_nano)),
            }
            for day in result.days
        ],
        "rows": [
            {
                "day": row.day,
                "model": row.model,
                "partial": row.partial,
                "provider": _side(row.provider, ledger=False),
                "ledger": _side(row.ledger, ledger=True),
                "coverage": _coverage(row),
                "drift_usd": format_usd(row.drift_nano),
                "drift_percent": _text(
                    service.drift_percent(row.drift_nano, row.provider.cost_nano)
                ),
            }
            for row in result.rows
        ],
    }


assert set(TOKEN_KINDS) - set(service.LEDGER_KINDS) == {"web_search_requests"}
