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


_PROVIDER_AT, _PROVIDER_COST = service.PROVIDER_AT, service.PROVIDER_COST
_LEDGER_AT, _LEDGER_COST = service.LEDGER_AT, service.LEDGER_COST
_COVERED = (*service.LEDGER_KINDS, "cost_usd")


def _provider_side(row: service.ComparisonRow) -> dict[str, Any]:
    figures: dict[str, Any] = dict(zip(TOKEN_KINDS, row[_PROVIDER_AT:_PROVIDER_COST], strict=True))
    figures["cost_usd"] = format_usd(row[_PROVIDER_COST])
    figures["unpriced_events"] = None
    return figures


def _ledger_side(row: service.ComparisonRow) -> dict[str, Any]:
    figures: dict[str, Any] = dict(
        zip(service.LEDGER_KINDS, row[_LEDGER_AT:_LEDGER_COST], strict=True)
    )
    figures["web_search_requests"] = None  # the last of TOKEN_KINDS
    figures["cost_usd"] = format_usd(row[_LEDGER_COST])
    figures["unpriced_events"] = row[service.LEDGER_UNPRICED]
    return figures


def _coverage(row: service.ComparisonRow) -> dict[str, str | None]:
    """ratio()'s figures as text (4 places), per kind and of the cost."""
    units = [
        service.ratio_units(row[_LEDGER_AT + n], row[_PROVIDER_AT + n], 4)
        for n in range(len(service.LEDGER_KINDS))
    ]
    units.append(service.ratio_units(row[_LEDGER_COST], row[_PROVIDER_COST], 4))
    return {kind: _units_text(value, 4) for kind, value in zip(_COVERED, units, strict=True)}


def _drift(provider_nano: int, ledger_nano: int) -> dict[str, str | None]:
    """drift_usd and drift_percent of a row, a day or the whole range (service.drift_nano)."""
    drift = service.drift_nano(provider_nano, ledger_nano)
    return {"drift_usd": format_usd(drift), "drift_percent": _percent(drift, provider_nano)}


def _row_body(row: service.ComparisonRow) -> dict[str, Any]:
    return {
        "day": row[0],
        "model": row[1],
        "partial": bool(row[2]),
        "provider": _provider_side(row),
        "ledger": _ledger_side(row),
        "coverage": _coverage(row),
        **_drift(row[_PROVIDER_COST], row[_LEDGER_COST]),
    }


# A row's JSON is a function of the row alone (a flat tuple of its day, model and figures:
# hashed in C): kept for the rows asked most recently (two years of 20 models), so that a
# range asked again renders only what changed. About 1 KiB a row.
@functools.lru_cache(maxsize=16_384)
def _row_json(row: service.ComparisonRow) -> bytes:
    return to_json(_row_body(row))


def _summary(result: service.Comparison) -> dict[str, Any]:
    return {
        "provider": result.provider,
        "from": result.first.isoformat(),
        "to": result.last.isoformat(),
        "organization_id": result.organization_id,
        "timezone": "UTC",
        "provider_cost_usd": format_usd(result.provider_nano),
        "ledger_cost_usd": format_usd(result.ledger_nano),
        **_drift(result.provider_nano, result.ledger_nano),
    }


def _day_body(day: str, partial: bool, provider_nano: int, ledger_nano: int) -> dict[str, Any]:
    return {
        "day": day,
        "partial": partial,
        "provider_cost_usd": format_usd(provider_nano),
        "ledger_cost_usd": format_usd(ledger_nano),
        **_drift(provider_nano, ledger_nano),
    }


# A day's JSON, like a row's: a function of its figures alone (a few years of days).
@functools.lru_cache(maxsize=2048)
def _day_json(day: str, partial: bool, provider_nano: int, ledger_nano: int) -> bytes:
    return to_json(_day_body(day, partial, provider_nano, ledger_nano))


def comparison_body(result: service.Comparison) -> dict[str, Any]:
    """One dataset, rendered as the Provider bill page and (comparison_json) as JSON.

    Plain dicts in ComparisonRead's shape: a year is 7,300 rows, and building them as
    pydantic models took most of the answer's time.
    """
    return {
        **_summary(result),
        "days": [
            _day_body(day.day, day.partial, day.provider_nano, day.ledger_nano)
            for day in result.days
        ],
        "rows": [_row_body(row) for row in result.rows],
    }


def comparison_json(result: service.Comparison) -> bytes:
    """comparison_body as JSON (pydantic's serializer), each day's and row's from
    _day_json and _row_json."""
    summary = to_json(_summary(result))
    days = b",".join(
        [_day_json(day.day, day.partial, day.provider_nano, day.ledger_nano) for day in result.days]
    )
    head = b"".join((summary[:-1], b',"days":[', days, b'],"rows":['))
    rows = list(map(_row_json, result.rows))
    if not rows:
        return head + b"]}"
    # One join makes the answer: the head goes before the first row, the end after the
    # last (joining the rows, then the answer, made and copied a year's 5 MB twice).
    rows[0] = head + rows[0]
    rows[-1] += b"]}"
    return b",".join(rows)


assert set(TOKEN_KINDS) - set(service.LEDGER_KINDS) == {"web_search_requests"}
