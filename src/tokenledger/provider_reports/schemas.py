"""The comparison's shapes: one dataset (service.compare) rendered as the JSON of
GET /api/provider-reports/comparison and, as the same dicts, the Provider bill page."""

from __future__ import annotations

import functools
from datetime import date
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_json

from tokenledger.money import decimal_text, format_usd
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


def _units_text(units: int | None, places: int) -> str | None:
    return None if units is None else decimal_text(units, places)


def _percent(drift_nano: int, provider_nano: int) -> str | None:
    """drift_percent's figure as text (2 places)."""
    return _units_text(service.ratio_units(drift_nano * 100, provider_nano, 2), 2)


def _side(side: service.Side, ledger: bool) -> dict[str, Any]:
    figures: dict[str, Any] = side.tokens
    if ledger:
        figures["web_search_requests"] = None
    figures["cost_usd"] = format_usd(side.cost_nano)
    figures["unpriced_events"] = side.unpriced_events if ledger else None
    return figures


_COVERED = (*service.LEDGER_KINDS, "cost_usd")


def _coverage(row: service.ComparisonRow) -> dict[str, str | None]:
    """ratio()'s figures as text (4 places), per kind and of the cost."""
    ours, theirs = row.ledger.figures, row.provider.figures
    units = [service.ratio_units(ours[n], theirs[n], 4) for n in range(len(service.LEDGER_KINDS))]
    units.append(service.ratio_units(row.ledger.cost_nano, row.provider.cost_nano, 4))
    return {kind: _units_text(value, 4) for kind, value in zip(_COVERED, units, strict=True)}


def _row_body(row: service.ComparisonRow) -> dict[str, Any]:
    return {
        "day": row.day,
        "model": row.model,
        "partial": row.partial,
        "provider": _side(row.provider, ledger=False),
        "ledger": _side(row.ledger, ledger=True),
        "coverage": _coverage(row),
        "drift_usd": format_usd(row.drift_nano),
        "drift_percent": _percent(row.drift_nano, row.provider.cost_nano),
    }


# A row's JSON is a function of the row alone (its day, model and figures): kept for the
# rows asked most recently (two years of 20 models), so that a range asked again renders
# only what changed. About 1 KiB a row.
@functools.lru_cache(maxsize=16_384)
def _row_json(row: service.ComparisonRow) -> bytes:
    return to_json(_row_body(row))


def _head(result: service.Comparison) -> dict[str, Any]:
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
        "drift_percent": _percent(drift, result.provider_nano),
        "days": [
            {
                "day": day.day,
                "partial": day.partial,
                "provider_cost_usd": format_usd(day.provider_nano),
                "ledger_cost_usd": format_usd(day.ledger_nano),
                "drift_usd": format_usd(day.drift_nano),
                "drift_percent": _percent(day.drift_nano, day.provider_nano),
            }
            for day in result.days
        ],
    }


def comparison_body(result: service.Comparison) -> dict[str, Any]:
    """One dataset, rendered as the Provider bill page and (comparison_json) as JSON.

    Plain dicts in ComparisonRead's shape: a year is 7,300 rows, and building them as
    pydantic models took most of the answer's time.
    """
    return {**_head(result), "rows": [_row_body(row) for row in result.rows]}


def comparison_json(result: service.Comparison) -> bytes:
    """comparison_body as JSON (pydantic's serializer), each row's from _row_json."""
    head = to_json(_head(result))
    return b"".join(
        (head[:-1], b',"rows":[', b",".join(_row_json(row) for row in result.rows), b"]}")
    )


assert set(TOKEN_KINDS) - set(service.LEDGER_KINDS) == {"web_search_requests"}
