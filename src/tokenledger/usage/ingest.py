"""Batch ingestion: validate, price, insert-or-skip, and roll up, in one transaction.

Round trips per batch are constant: one query each for organizations, licenses (locked in
id order), price overrides, the insert, the stored twins of duplicates, and one upsert per
rollup table, however many events the batch holds.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, or_, select, update
from sqlalchemy.orm import Session

from tokenledger.config import Settings
from tokenledger.db import MAX_ROW_ID, insert_for
from tokenledger.errors import DomainError
from tokenledger.licenses import service as licenses
from tokenledger.licenses.models import License
from tokenledger.money import credits_for_cost, format_credits, format_usd, usd_to_nano
from tokenledger.organizations.models import Organization
from tokenledger.pricing.engine import UsageError
from tokenledger.pricing.overrides import price_book
from tokenledger.usage import providers
from tokenledger.usage.models import (
    INCOMPLETE_PRICING,
    LICENSE_USAGE_FIELDS,
    ROLLUP_FIELDS,
    LicenseUsage,
    TokenUsageMonthly,
    UsageDaily,
    UsageEvent,
)
from tokenledger.usage.periods import day_of, month_of
from tokenledger.usage.schemas import UsageBatch, UsageEventIn

MAX_FUTURE = timedelta(minutes=5)
_EVENTS = UsageEvent.__table__


@dataclass(slots=True)
class Prepared:
    index: int
    event: UsageEventIn
    org: Organization
    row: dict[str, Any]


@dataclass(slots=True)
class IngestOutcome:
    results: list[dict[str, Any]]  # the shape of schemas.EventResult
    organization_ids: list[int]
    created: int
    duplicates: int
    license_ids: list[int] = field(default_factory=list)
    created_rows: list[dict[str, Any]] = field(default_factory=list)


def _invalid(index: int, field_name: str, message: str) -> DomainError:
    return DomainError(
        422,
        "invalid_event",
        f"events[{index}].{field_name}: {message}",
        details={"index": index, "field": field_name},
    )


def _as_org_id(ref: str) -> int | None:
    """The id a reference may mean; None for text (or numbers) no organization id can be."""
    if not (ref.isascii() and ref.isdigit()):
        return None
    value = int(ref)
    return value if 1 <= value <= MAX_ROW_ID else None


def _resolve_organizations(
    session: Session, batch: UsageBatch, key_org_id: int | None
) -> list[Organization]:
    refs = {str(e.organization) for e in batch.events if e.organization is not None}
    ids = {org_id for org_id in map(_as_org_id, refs) if org_id is not None}
    if key_org_id is not None:
        ids.add(key_org_id)
    conditions = []
    if refs:
        conditions.append(Organization.slug.in_(refs))
    if ids:
        conditions.append(Organization.id.in_(ids))
    found = (
        list(session.scalars(select(Organization).where(or_(*conditions))).all())
        if conditions
        else []
    )
    by_slug = {org.slug: org for org in found}
    by_id = {org.id: org for org in found}
    result = []
    for index, event in enumerate(batch.events):
        if event.organization is None:
            if key_org_id is None:
                raise _invalid(index, "organization", "required with a service key")
            result.append(by_id[key_org_id])
            continue
        ref = str(event.organization)
        org = by_slug.get(ref)
        if org is None and (org_id := _as_org_id(ref)) is not None:
            org = by_id.get(org_id)
        if org is None:
            raise _invalid(index, "organization", f"unknown organization {ref!r}")
        if key_org_id is not None and org.id != key_org_id:
            raise DomainError(
                403,
                "organization_mismatch",
                f"events[{index}]: this key may only write usage of its own organization",
                details={"index": index, "field": "organization"},
            )
        result.append(org)
    return result


def content_hash(event: UsageEventIn, org_id: int) -> str:
    """A digest of what the event says; a reused id with another digest is a conflict.

    The timestamp counts only when the caller gave it: a retry of an event stamped at
    receipt is still the same event. Fields are read in a fixed order (the list is the
    format: append new fields at the end so that stored digests stay valid).
    """
    content = [
        org_id,
        event.id,
        # The instant, whatever offset it was written with.
        event.timestamp.astimezone(UTC).isoformat() if event.timestamp is not None else None,
        # The caller's word (the old default when it gave none), not the inferred provider:
        # the same request keeps the same digest.
        event.provider or "anthropic",
        event.model,
        event.input_tokens,
        event.output_tokens,
        event.cache_write_tokens,
        event.cache_write_1h_tokens,
        event.cache_read_input_tokens,
        event.api_calls,
        event.refresh_id,
        str(event.cost_usd.normalize()) if event.cost_usd is not None else None,
        event.reservation_id,
        event.metadata,
    ]
    # Appended only when present, so that the digests of plain flat events stay as they were.
    extras = event.anthropic_extras()
    if event.usage is not None:
        extras["usage"] = event.usage
    if extras:
        content.append(extras)
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def ingest(
    session: Session,
    batch: UsageBatch,
    *,
    key_org_id: int | None,
    settings: Settings,
    now: datetime,
) -> IngestOutcome:
    tz = settings.timezone
    orgs = _resolve_organizations(session, batch, key_org_id)
    oldest = now - timedelta(days=settings.backfill_max_age_days)

    # Lock every license these events may belong to, in id order (no deadlocks between
    # batches), before reading their rates: credits use the rate that is committed.
    org_ids = sorted({org.id for org in orgs})
    candidates = licenses.candidates_for(session, org_ids, lock=True)
    book = price_book(session)

    periods = _PeriodCache(tz)
    prepared: list[Prepared] = []
    seen: dict[tuple[int, str], Prepared] = {}
    in_batch_duplicates: list[tuple[int, Prepared]] = []
    aged: list[Prepared] = []
    for index, (event, org) in enumerate(zip(batch.events, orgs, strict=True)):
        at = event.timestamp or now
        if at > now + MAX_FUTURE:
            raise _invalid(index, "timestamp", "more than 5 minutes in the future")
        digest = content_hash(event, org.id)
        key = (org.id, event.id)
        twin = seen.get(key)
        if twin is not None:
            if twin.row["content_hash"] != digest:
                raise DomainError(
                    409,
                    "idempotency_conflict",
                    f"events[{index}]: id {event.id!r} appears twice with different content",
                    details={"index": index, "id": event.id},
                )
            in_batch_duplicates.append((index, twin))
            continue
        if at < oldest:
            # Too old only if new: a retry of a stored event is still answered `duplicate`.
            aged.append(Prepared(index=index, event=event, org=org, row={"content_hash": digest}))
            seen[key] = aged[-1]
            continue
        row = _priced_row(index, event, org, at, now, digest, periods, candidates[org.id], book)
        item = Prepared(index=index, event=event, org=org, row=row)
        seen[key] = item
        prepared.append(item)

    aged_twins = _stored_twins(session, aged)
    for item in aged:
        if _key(item) not in aged_twins:
            days = settings.backfill_max_age_days
            raise _invalid(item.index, "timestamp", f"older than {days} days")
    created_keys, stored = _write_events(session, prepared)
    stored.update(aged_twins)

    results: list[dict[str, Any] | None] = [None] * len(batch.events)
    created_rows: list[dict[str, Any]] = []
    for item in [*prepared, *aged]:
        if _key(item) in created_keys:
            created_rows.append(item.row)
            results[item.index] = _result(item, "created", item.row)
            continue
        previous = stored[_key(item)]
        if previous["content_hash"] != item.row["content_hash"]:
            raise DomainError(
                409,
                "idempotency_conflict",
                f"events[{item.index}]: id {item.event.id!r} was already used for "
                "different content",
                details={"index": item.index, "id": item.event.id},
            )
        results[item.index] = _result(item, "duplicate", previous)
    for index, twin in in_batch_duplicates:
        original = results[twin.index]
        assert original is not None
        results[index] = {**original, "status": "duplicate"}

    _roll_up(session, created_rows)
    final = [result for result in results if result is not None]
    return IngestOutcome(
        results=final,
        organization_ids=org_ids,
        created=len(created_rows),
        duplicates=len(final) - len(created_rows),
        license_ids=sorted({r["license_id"] for r in created_rows if r["license_id"]}),
        created_rows=created_rows,
    )


def _key(item: Prepared) -> tuple[int, str]:
    return (item.org.id, item.event.id)


def _priced_row(
    index: int,
    event: UsageEventIn,
    org: Organization,
    at: datetime,
    now: datetime,
    digest: str,
    periods: _PeriodCache,
    candidates: list[License],
    book: Any,
) -> dict[str, Any]:
    lic = licenses.in_force_at(candidates, at)
    year_month, day = periods.of(at)
    try:
        read = providers.event_usage(event, book)
    except providers.UsageReadError as exc:
        raise _invalid(index, "usage", str(exc)) from exc
    tokens = read.tokens
    row: dict[str, Any] = {
        "organization_id": org.id,
        "external_id": event.id,
        "content_hash": digest,
        "timestamp": at,
        "received_at": now,
        "year_month": year_month,
        "day": day,
        "provider": read.provider,
        "model": event.model,
        "input_tokens": tokens.input_tokens,
        "output_tokens": tokens.output_tokens,
        "cache_creation_input_tokens": tokens.cache_creation_input_tokens,
        "cache_read_input_tokens": tokens.cache_read_input_tokens,
        "cache_write_1h_tokens": tokens.cache_write_1h_tokens,
        "api_calls": event.api_calls,
        "refresh_id": event.refresh_id,
        "reservation_id": event.reservation_id,
        "license_id": lic.id if lic else None,
        "cost_nano": None,
        "credits_micro": None,
        "pricing": "unpriced",
        "price_source": None,
        "price_version": None,
        "priced_model": None,
        "rates": None,
        "metadata": event.metadata,
        "usage_object": read.stored,
        "unpriced_units": ",".join(read.unknown_units) or None,
    }
    if event.cost_usd is not None:
        row["cost_nano"] = usd_to_nano(event.cost_usd)
        row["pricing"] = "provided"
        row["price_source"] = "caller"
    else:
        try:
            quote = book.quote(read.provider, event.model, tokens, at, read.context)
        except UsageError as exc:
            raise _invalid(index, "usage", str(exc)) from exc
        if quote is not None:
            unpriced = quote.unpriced_units + read.unknown_units
            row.update(
                cost_nano=quote.cost_nano,
                # A cost that leaves out a unit the call used is never shown as complete.
                pricing="partially_priced" if unpriced else "priced",
                price_source=quote.source,
                price_version=quote.version,
                priced_model=quote.priced_model,
                rates=quote.rates,
                unpriced_units=",".join(unpriced) or None,
            )
    if lic is not None and row["cost_nano"] is not None:
        row["credits_micro"] = credits_for_cost(row["cost_nano"], lic.cost_per_credit_nano)
    return row


def _write_events(
    session: Session, items: list[Prepared]
) -> tuple[set[tuple[int, str]], dict[tuple[int, str], dict[str, Any]]]:
    """Insert-or-skip: the keys that were new, and the stored rows of those that were not.

    Rows go in key order: a batch waits on the unique keys another uncommitted batch has
    inserted, so two batches with the same ids in different orders would deadlock.
    """
    if not items:
        return set(), {}
    items = sorted(items, key=_key)
    if session.get_bind().dialect.name == "sqlite":
        # The transaction began with BEGIN IMMEDIATE and holds SQLite's one write lock, so
        # no key can appear between this read and the insert: read the twins, then insert
        # the rest with the driver's own executemany, which runs in C.
        stored = _stored_twins(session, items)
        new_rows = [item.row for item in items if _key(item) not in stored]
        _insert_sqlite(session, new_rows)
        return {(row["organization_id"], row["external_id"]) for row in new_rows}, stored
    statement = (
        insert_for(session)(_EVENTS)
        .on_conflict_do_nothing(index_elements=["organization_id", "external_id"])
        .returning(_EVENTS.c.organization_id, _EVENTS.c.external_id)
    )
    returned = session.execute(statement, [item.row for item in items]).all()
    created = {(org_id, external_id) for org_id, external_id in returned}
    return created, _stored_twins(session, [item for item in items if _key(item) not in created])


_COLUMNS = [column.name for column in _EVENTS.columns if column.name != "id"]
_JSON_COLUMNS = {"rates", "metadata", "usage_object"}
_TIME_COLUMNS = {"timestamp", "received_at"}
_CONVERTED = _JSON_COLUMNS | _TIME_COLUMNS
_SQLITE_INSERT = (
    f"INSERT INTO usage_events ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"
)


def _insert_sqlite(session: Session, rows: list[dict[str, Any]]) -> None:
    """Bind values as SQLAlchemy would on SQLite (the same text for times and JSON).

    Many rows share a value (the receipt time, the rates of one price): each distinct
    object is converted once.
    """
    if not rows:
        return
    converted: dict[tuple[str, object], Any] = {}

    def bind(name: str, value: Any) -> Any:
        if value is None or name not in _CONVERTED:
            return value
        # Rates are equal dicts for every event of one model and price: keyed by content.
        key: tuple[str, object] = (name, id(value))
        if name == "rates":
            key = (name, tuple(value.items()))  # values are decimal text: hashable
        if key not in converted:
            if name in _TIME_COLUMNS:
                converted[key] = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
            else:
                converted[key] = json.dumps(value)
        return converted[key]

    session.connection().exec_driver_sql(
        _SQLITE_INSERT, [tuple(bind(name, row[name]) for name in _COLUMNS) for row in rows]
    )


def _stored_twins(session: Session, items: list[Prepared]) -> dict[tuple[int, str], dict[str, Any]]:
    if not items:
        return {}
    ids_by_org: dict[int, list[str]] = defaultdict(list)
    for item in items:
        ids_by_org[item.org.id].append(item.event.id)
    columns = _EVENTS.c
    # Per organization an IN list over the unique index; cheaper than a row-value IN.
    rows = session.execute(
        select(
            columns.organization_id,
            columns.external_id,
            columns.content_hash,
            columns.cost_nano,
            columns.credits_micro,
            columns.pricing,
        ).where(
            or_(
                *(
                    and_(columns.organization_id == org_id, columns.external_id.in_(ids))
                    for org_id, ids in sorted(ids_by_org.items())
                )
            )
        )
    ).mappings()
    return {(row["organization_id"], row["external_id"]): dict(row) for row in rows}


def _result(item: Prepared, status: str, row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": item.event.id,
        "organization": item.org.slug,
        "status": status,
        "cost_usd": format_usd(row["cost_nano"]),
        "credits": format_credits(row["credits_micro"]),
        "pricing": row["pricing"],
    }


class _PeriodCache:
    """Billing month and day of instants, computed once per quarter hour.

    Every time zone's offset is a whole number of quarter hours (for the dates a backfill
    can reach), so all instants of one UTC quarter hour share their local date.
    """

    def __init__(self, tz: Any) -> None:
        self.tz = tz
        self._cache: dict[int, tuple[str, str]] = {}

    def of(self, at: datetime) -> tuple[str, str]:
        bucket = int(at.timestamp()) // 900
        found = self._cache.get(bucket)
        if found is None:
            found = self._cache[bucket] = (month_of(at, self.tz), day_of(at, self.tz))
        return found


def _sums(
    groups: dict[Any, list[tuple[int, ...]]], names: tuple[str, ...]
) -> dict[Any, dict[str, int]]:
    return {
        key: dict(zip(names, (sum(column) for column in zip(*values, strict=True)), strict=True))
        for key, values in groups.items()
    }


def _roll_up(session: Session, rows: list[dict[str, Any]]) -> None:
    """Add the new events to every rollup: aggregated in memory, one upsert per table."""
    if not rows:
        return
    monthly: dict[tuple[int, str], list[tuple[int, ...]]] = defaultdict(list)
    daily: dict[tuple[int, str, str, str], list[tuple[int, ...]]] = defaultdict(list)
    by_license: dict[tuple[int, str], list[tuple[int, ...]]] = defaultdict(list)
    for row in rows:
        cost = row["cost_nano"]
        values = (
            row["input_tokens"],
            row["output_tokens"],
            row["cache_creation_input_tokens"],
            row["cache_read_input_tokens"],
            cost or 0,
            row["api_calls"],
            1,
            int(row["pricing"] in INCOMPLETE_PRICING),
        )
        monthly[(row["organization_id"], row["year_month"])].append(values)
        daily[(row["organization_id"], row["day"], row["provider"], row["model"])].append(values)
        if row["license_id"] is not None:
            by_license[(row["license_id"], row["year_month"])].append(
                (cost or 0, row["credits_micro"] or 0, 1)
            )

    license_sums = _sums(by_license, LICENSE_USAGE_FIELDS)
    _upsert(
        session, TokenUsageMonthly, ("organization_id", "year_month"), _sums(monthly, ROLLUP_FIELDS)
    )
    _upsert(
        session,
        UsageDaily,
        ("organization_id", "day", "provider", "model"),
        _sums(daily, ROLLUP_FIELDS),
    )
    _upsert(session, LicenseUsage, ("license_id", "year_month"), license_sums)

    credits: dict[int, int] = defaultdict(int)
    for (license_id, _month), sums in license_sums.items():
        credits[license_id] += sums["credits_micro"]
    deltas = [
        {"license_key": lid, "delta": delta} for lid, delta in sorted(credits.items()) if delta
    ]
    if deltas:
        table = cast(Table, License.__table__)
        session.execute(
            update(table)
            .where(table.c.id == bindparam("license_key"))
            .values(credits_used_micro=table.c.credits_used_micro + bindparam("delta")),
            deltas,
        )


def _upsert(
    session: Session,
    model: Any,
    key_columns: tuple[str, ...],
    groups: dict[Any, dict[str, int]],
) -> None:
    """INSERT ... ON CONFLICT DO UPDATE SET x = x + excluded.x, rows sorted by key.

    One executemany of one statement per table and dialect, so SQLAlchemy compiles it
    once per process instead of once per batch.
    """
    if not groups:
        return
    rows = [
        {**dict(zip(key_columns, key, strict=True)), **sums} for key, sums in sorted(groups.items())
    ]
    summed = tuple(name for name in rows[0] if name not in key_columns)
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
    session.execute(statement, rows)


_UPSERTS: dict[tuple[Any, ...], Any] = {}
