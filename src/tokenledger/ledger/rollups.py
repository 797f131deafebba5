"""Rollups and credits: the new events of a group added to the monthly, daily, UTC-daily
and per-license sums, and their credits to their licenses.

Owns the aggregation in memory and one upsert per table (x = x + excluded.x, rows sorted
by key for the lock order); every figure and report is read from these rows, never by
scanning events.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from typing import Any

from sqlalchemy.orm import Session

from tokenledger.db import execute_rows, insert_for
from tokenledger.licenses import service as licenses
from tokenledger.periods import utc_day_of
from tokenledger.usage.models import (
    INCOMPLETE_PRICING,
    LICENSE_USAGE_FIELDS,
    ROLLUP_FIELDS,
    UTC_ROLLUP_FIELDS,
    LicenseUsage,
    TokenUsageMonthly,
    UsageDaily,
    UsageUtcDaily,
)

ROLLUP_KEY = ("organization_id", "day", "provider", "model")  # usage_daily, usage_utc_daily


def _add(sums: dict[Any, tuple[int, ...]], key: Any, values: tuple[int, ...]) -> None:
    found = sums.get(key)
    sums[key] = values if found is None else tuple(map(operator.add, found, values))


def roll_up(session: Session, rows: list[dict[str, Any]]) -> None:
    """Add the new events to every rollup and their credits to their licenses: aggregated
    in memory, one statement per table."""
    if not rows:
        return
    monthly: dict[tuple[int, str], tuple[int, ...]] = {}
    daily: dict[tuple[int, str, str, str], tuple[int, ...]] = {}
    utc_daily: dict[tuple[int, str, str, str], tuple[int, ...]] = {}
    by_license: dict[tuple[int, str], tuple[int, ...]] = {}
    for row in rows:
        cost = row["cost_nano"] or 0
        incomplete = int(row["pricing"] in INCOMPLETE_PRICING)
        values = (
            row["input_tokens"],
            row["output_tokens"],
            row["cache_creation_input_tokens"],
            row["cache_read_input_tokens"],
            cost,
            row["api_calls"],
            1,
            incomplete,
        )
        _add(monthly, (row["organization_id"], row["year_month"]), values)
        _add(daily, (row["organization_id"], row["day"], row["provider"], row["model"]), values)
        # In the order of UTC_ROLLUP_FIELDS: the tokens by the kinds of a provider's report.
        _add(
            utc_daily,
            (row["organization_id"], utc_day_of(row["timestamp"]), row["provider"], row["model"]),
            (
                row["input_tokens"],
                row["cache_creation_input_tokens"] - row["cache_write_1h_tokens"],
                row["cache_write_1h_tokens"],
                row["cache_read_input_tokens"],
                row["output_tokens"],
                cost,
                1,
                incomplete,
            ),
        )
        if row["license_id"] is not None:
            _add(
                by_license,
                (row["license_id"], row["year_month"]),
                (cost, row["credits_micro"] or 0, 1),
            )

    _upsert(session, TokenUsageMonthly, ("organization_id", "year_month"), ROLLUP_FIELDS, monthly)
    _upsert(session, UsageDaily, ROLLUP_KEY, ROLLUP_FIELDS, daily)
    _upsert(session, UsageUtcDaily, ROLLUP_KEY, UTC_ROLLUP_FIELDS, utc_daily)
    _upsert(session, LicenseUsage, ("license_id", "year_month"), LICENSE_USAGE_FIELDS, by_license)

    credits: dict[int, int] = defaultdict(int)
    for (license_id, _month), (_cost, added, _count) in by_license.items():
        credits[license_id] += added
    licenses.add_credits_used(session, credits)


def _upsert(
    session: Session,
    model: Any,
    key_columns: tuple[str, ...],
    summed: tuple[str, ...],
    groups: dict[Any, tuple[int, ...]],
) -> None:
    """INSERT ... ON CONFLICT DO UPDATE SET x = x + excluded.x, rows sorted by key.

    One executemany of one statement per table and dialect, compiled once per process.
    """
    if not groups:
        return
    names = key_columns + summed
    rows = [dict(zip(names, key + sums, strict=True)) for key, sums in sorted(groups.items())]
    dialect = session.get_bind().dialect.name
    cache_key = (dialect, model.__tablename__, key_columns, summed)
    statement = _UPSERTS.get(cache_key)
    if statement is None:
        table = model.__table__
        insert = insert_for(session)(table)
        statement = _UPSERTS[cache_key] = insert.on_conflict_do_update(
            index_elements=list(key_columns),
            set_={name: table.c[name] + insert.excluded[name] for name in summed},
        )
    execute_rows(session, statement, rows)


_UPSERTS: dict[tuple[Any, ...], Any] = {}
