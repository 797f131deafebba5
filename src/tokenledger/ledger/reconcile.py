"""Recompute every rollup and balance from the events, report drift, optionally fix it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import (
    BigInteger,
    case,
    func,
    literal_column,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy.orm import Session

import tokenledger.models  # noqa: F401  (every table: rows written here have foreign keys)
from tokenledger.licenses.models import CreditAdjustment, License
from tokenledger.usage.models import (
    INCOMPLETE_PRICING,
    LICENSE_USAGE_FIELDS,
    ROLLUP_FIELDS,
    UTC_ROLLUP_FIELDS,
    LicenseUsage,
    Refresh,
    TokenUsageMonthly,
    UsageDaily,
    UsageEvent,
    UsagePrice,
    UsageUtcDaily,
)

E = UsageEvent
_INCOMPLETE = func.sum(case((UsagePrice.pricing.in_(INCOMPLETE_PRICING), 1), else_=0))


def _event_sums() -> dict[str, Any]:
    """What each rollup field is, as an aggregate over events."""
    return {
        "input_tokens": func.sum(E.input_tokens),
        "output_tokens": func.sum(E.output_tokens),
        "cache_creation_tokens": func.sum(E.cache_creation_input_tokens),
        "cache_read_tokens": func.sum(E.cache_read_input_tokens),
        "cost_nano": func.sum(func.coalesce(E.cost_nano, 0)),
        "api_calls": func.sum(E.api_calls),
        "event_count": func.count(),
        "unpriced_events": _INCOMPLETE,
    }


def _utc_sums() -> dict[str, Any]:
    """What each usage_utc_daily field is, as an aggregate over events."""
    sums = {
        "uncached_input_tokens": func.sum(E.input_tokens),
        "cache_write_5m_tokens": func.sum(E.cache_creation_input_tokens - E.cache_write_1h_tokens),
        "cache_write_1h_tokens": func.sum(E.cache_write_1h_tokens),
        "cache_read_tokens": func.sum(E.cache_read_input_tokens),
        "output_tokens": func.sum(E.output_tokens),
        "cost_nano": func.sum(func.coalesce(E.cost_nano, 0)),
        "event_count": func.count(),
        "unpriced_events": _INCOMPLETE,
    }
    assert tuple(sums) == UTC_ROLLUP_FIELDS
    return sums


def utc_day_sql(session: Session) -> Any:
    """The UTC day of an event, 'YYYY-MM-DD', in SQL: instants are integers of microseconds
    on SQLite, naive UTC timestamps on PostgreSQL."""
    # Constants as SQL text, not parameters: the expression is grouped by, too; SQLite's
    # plain "/" of two integers is the integer division (SQLAlchemy's own would cast).
    if session.get_bind().dialect.name == "sqlite":
        seconds = type_coerce(E.timestamp, BigInteger).op("/")(literal_column("1000000"))
        return func.date(seconds, literal_column("'unixepoch'"))
    return func.to_char(E.timestamp, literal_column("'YYYY-MM-DD'"))


def _expected_rollup(
    session: Session, keys: list[Any], sums: dict[str, Any] | None = None
) -> dict[tuple[Any, ...], dict[str, int]]:
    sums = sums or _event_sums()
    # How an event was priced lives in its price row (unpriced_events, provider, model).
    query = (
        select(*keys, *(expr.label(name) for name, expr in sums.items()))
        .select_from(E)
        .join(UsagePrice, UsagePrice.id == E.price_id)
    )
    rows = session.execute(query.group_by(*keys)).all()
    width = len(keys)
    return {
        tuple(row[:width]): {
            name: int(value or 0) for name, value in zip(sums, row[width:], strict=True)
        }
        for row in rows
    }


def _compare(
    label: str,
    expected: dict[tuple[Any, ...], dict[str, int]],
    stored: dict[tuple[Any, ...], dict[str, int]],
    fields: Iterable[str],
) -> list[tuple[tuple[Any, ...], dict[str, int], str]]:
    drift = []
    for key in sorted(set(expected) | set(stored), key=str):
        want = expected.get(key, {})
        have = stored.get(key, {})
        for name in fields:
            if int(want.get(name, 0)) != int(have.get(name, 0)):
                drift.append(
                    (
                        key,
                        want,
                        f"{label} {key}: {name} is {have.get(name, 0)}, events say "
                        f"{want.get(name, 0)}",
                    )
                )
    return drift


# What reconcile reads and writes, licenses first: ingestion locks its licenses before it
# writes events, so taking them in the same order cannot deadlock with a batch.
_LOCKED_TABLES = (
    "licenses",
    "usage_events",
    "refreshes",
    "credit_adjustments",
    "token_usage_monthly",
    "usage_daily",
    "usage_utc_daily",
    "license_usage",
)


def reconcile(session: Session, *, fix: bool) -> list[str]:
    """Drift between the events and what is maintained from them; with fix, repaired.

    On PostgreSQL the tables are locked against writers first: otherwise a batch that
    commits between summing the events and reading (or rewriting) a rollup would show up
    as drift, and --fix would overwrite its increments with the older sums.
    SQLite's write transaction already excludes every other writer.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"LOCK TABLE {', '.join(_LOCKED_TABLES)} IN EXCLUSIVE MODE"))
    lines: list[str] = []
    # token_usage_monthly, including refresh_count from completed refreshes
    expected = _expected_rollup(session, [E.organization_id, E.year_month])
    for org_id, month, count in session.execute(
        select(Refresh.organization_id, Refresh.counted_month, func.count())
        .where(Refresh.counted_month.is_not(None))
        .group_by(Refresh.organization_id, Refresh.counted_month)
    ):
        expected.setdefault((org_id, month), {})["refresh_count"] = count
    lines += _check(
        session,
        TokenUsageMonthly,
        ("organization_id", "year_month"),
        expected,
        (*ROLLUP_FIELDS, "refresh_count"),
        fix=fix,
    )
    lines += _check(
        session,
        UsageDaily,
        ("organization_id", "day", "provider", "model"),
        _expected_rollup(
            session, [E.organization_id, E.day, UsagePrice.provider, UsagePrice.model]
        ),
        ROLLUP_FIELDS,
        fix=fix,
    )
    lines += _check(
        session,
        UsageUtcDaily,
        ("organization_id", "day", "provider", "model"),
        _expected_rollup(
            session,
            [E.organization_id, utc_day_sql(session), UsagePrice.provider, UsagePrice.model],
            _utc_sums(),
        ),
        UTC_ROLLUP_FIELDS,
        fix=fix,
    )
    expected = {
        (lid, month): {
            "cost_nano": int(cost or 0),
            "credits_micro": int(credits or 0),
            "event_count": int(count),
        }
        for lid, month, cost, credits, count in session.execute(
            select(
                E.license_id,
                E.year_month,
                func.sum(func.coalesce(E.cost_nano, 0)),
                func.sum(func.coalesce(E.credits_micro, 0)),
                func.count(),
            )
            .where(E.license_id.is_not(None))
            .group_by(E.license_id, E.year_month)
        )
    }
    lines += _check(
        session,
        LicenseUsage,
        ("license_id", "year_month"),
        expected,
        LICENSE_USAGE_FIELDS,
        fix=fix,
    )

    # credits_used = sum of event credits + sum of adjustments
    event_credits = dict(
        session.execute(
            select(E.license_id, func.sum(func.coalesce(E.credits_micro, 0)))
            .where(E.license_id.is_not(None))
            .group_by(E.license_id)
        ).all()
    )
    adjustments = dict(
        session.execute(
            select(CreditAdjustment.license_id, func.sum(CreditAdjustment.delta_micro)).group_by(
                CreditAdjustment.license_id
            )
        ).all()
    )
    for lic in session.scalars(select(License).order_by(License.id).with_for_update()):
        want = int(event_credits.get(lic.id) or 0) + int(adjustments.get(lic.id) or 0)
        if lic.credits_used_micro != want:
            lines.append(
                f"license {lic.id}: credits_used_micro is {lic.credits_used_micro}, "
                f"events and adjustments say {want}"
            )
            if fix:
                session.execute(
                    update(License).where(License.id == lic.id).values(credits_used_micro=want)
                )
    return lines


def _check(
    session: Session,
    model: Any,
    key_names: tuple[str, ...],
    expected: dict[tuple[Any, ...], dict[str, int]],
    fields: tuple[str, ...],
    *,
    fix: bool,
) -> list[str]:
    """Compare a rollup table with what the events say; with fix, rewrite drifting rows."""
    stored = {
        tuple(getattr(row, name) for name in key_names): {
            name: getattr(row, name) for name in fields
        }
        for row in session.scalars(select(model))
    }
    drift = _compare(model.__tablename__, expected, stored, fields)
    if fix and drift:
        _rewrite(session, model, key_names, expected, fields, {key for key, _, _ in drift})
    return [line for _, _, line in drift]


def _rewrite(
    session: Session,
    model: Any,
    key_names: tuple[str, ...],
    expected: dict[tuple[Any, ...], dict[str, int]],
    fields: tuple[str, ...],
    keys: set[tuple[Any, ...]],
) -> None:
    for key in keys:
        where = [getattr(model, name) == value for name, value in zip(key_names, key, strict=True)]
        want = {name: int(expected.get(key, {}).get(name, 0)) for name in fields}
        existing = session.scalar(select(model).where(*where))
        if existing is None:
            session.add(model(**dict(zip(key_names, key, strict=True)), **want))
        else:
            for name, value in want.items():
                setattr(existing, name, value)
    session.flush()
