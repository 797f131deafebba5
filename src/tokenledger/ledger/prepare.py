"""Batch ingestion: validate and price, then insert-or-skip and roll up, for many batches
in one transaction.

`prepare` does what needs no lock (organizations from the hot cache, timestamps, digests,
conflicts inside the batch, cost); it runs in the request, outside the writer. `write`
then settles, for a group of prepared batches at once, which events are new, which are
duplicates and which batches conflict with what is stored (those fail alone, claiming
nothing); `roll_up` adds the new events to every rollup. Round trips per group are
constant: one query for the stored twins of every event, one insert, one upsert per
rollup table, however many batches and events the group holds.

A batch is all or nothing (POST /api/v1/usage), or partial (POST /v1/traces, whose
protocol reports refused spans beside the stored ones): then an event refused for its own
reason (invalid, too old, an id reused for other content) is left out and reported in
`rejected`, and the rest of its batch is stored, in the same single pass.
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, select, text
from sqlalchemy.orm import Session

from tokenledger.config import Settings
from tokenledger.db import execute_rows, insert_for, to_micros
from tokenledger.errors import DomainError
from tokenledger.ledger import providers
from tokenledger.ledger.prices import assign_price_ids, price_fields, price_fingerprint
from tokenledger.licenses import service as licenses
from tokenledger.licenses.models import License, LicenseTerms
from tokenledger.money import (
    INT64_MAX,
    MAX_EVENT_USD,
    credits_for_cost,
    format_credits,
    format_usd,
    usd_to_nano,
)
from tokenledger.organizations import refs
from tokenledger.organizations.refs import OrgRef
from tokenledger.periods import day_of, month_of
from tokenledger.pricing.engine import PriceBook, UsageError
from tokenledger.usage.models import (
    INCOMPLETE_PRICING,
    LICENSE_USAGE_FIELDS,
    ROLLUP_FIELDS,
    LicenseUsage,
    TokenUsageMonthly,
    UsageDaily,
    UsageEvent,
)
from tokenledger.usage.schemas import UsageBatch, UsageEventIn

MAX_FUTURE = timedelta(minutes=5)
MAX_EVENT_NANO = usd_to_nano(MAX_EVENT_USD)
_EVENTS = UsageEvent.__table__

# Organizations by slug and by id, for the references given: (by_slug, by_id).
Key = tuple[int, str]


@dataclass(slots=True)
class Prepared:
    index: int
    event: UsageEventIn
    org: OrgRef
    row: dict[str, Any]  # the event's row, but for its license and credits
    # Past the backfill limit: refused (this message) unless it is a stored event's retry.
    too_old: str | None = None
    # The id is the provider's response id, which names one call: a stored event with it
    # is this call (reported by the gateway or another instrumentation), whatever figures
    # it was stored with, so this one is a duplicate, never a conflict.
    call_id: bool = False


@dataclass(slots=True)
class PreparedBatch:
    """One request's events, validated and priced; nothing stored yet."""

    events: list[Prepared]  # one per distinct (organization, id)
    repeats: list[tuple[int, Prepared]]  # later copies inside the batch: (index, first)
    size: int
    orgs: dict[int, OrgRef]
    touch_key_id: int | None = None  # record this ingest key's use with the events
    partial: bool = False  # an event refused for its own reason is left out, not the batch
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (index, why), partial


@dataclass(slots=True)
class IngestOutcome:
    results: list[dict[str, Any]]  # the shape of schemas.EventResult
    organization_ids: list[int]
    created: int
    duplicates: int
    created_rows: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (index, why), partial


def _invalid(index: int, field_name: str, message: str) -> DomainError:
    return DomainError(
        422,
        "invalid_event",
        f"events[{index}].{field_name}: {message}",
        details={"index": index, "field": field_name},
    )


def _resolve_organizations(
    batch: UsageBatch, key_org_id: int | None, lookup: refs.Lookup
) -> list[OrgRef | DomainError]:
    """Each event's organization (organizations.refs' rule), or why it has none it may
    write to, as the event's own error."""
    named = [None if e.organization is None else str(e.organization) for e in batch.events]
    return [
        found if isinstance(found, OrgRef) else _refused(found)
        for found in refs.resolve(lookup, key_org_id, named)
    ]


def _refused(refused: refs.Refused) -> DomainError:
    index = refused.index
    if refused.reason == "mismatch":
        return DomainError(
            403,
            "organization_mismatch",
            f"events[{index}]: this key may only write usage of its own organization",
            details={"index": index, "field": "organization"},
        )
    message = {
        "required": "required with a service key",
        "gone": "the key's organization is gone",
    }.get(refused.reason, f"unknown organization {refused.ref!r}")
    return _invalid(index, "organization", message)


def content_hash(event: UsageEventIn, org_id: int) -> bytes:
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
    return hashlib.sha256(canonical.encode()).digest()


def prepare(
    batch: UsageBatch,
    *,
    key_org_id: int | None,
    organizations: refs.Lookup,
    book: PriceBook,
    settings: Settings,
    now: datetime,
    partial: bool = False,
) -> PreparedBatch:
    """Everything about a batch that needs no lock; a DomainError refuses the batch (a
    partial batch: the event, listed in `rejected`)."""
    orgs = _resolve_organizations(batch, key_org_id, organizations)
    oldest = now - timedelta(days=settings.backfill_max_age_days)
    latest = now + MAX_FUTURE
    periods = _period_cache(settings.timezone)
    prepared: list[Prepared] = []
    seen: dict[Key, Prepared] = {}
    repeats: list[tuple[int, Prepared]] = []
    rejected: list[tuple[int, str]] = []
    for index, (event, org) in enumerate(zip(batch.events, orgs, strict=True)):
        try:
            if isinstance(org, DomainError):
                raise org
            at = event.timestamp or now
            if at > latest:
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
                repeats.append((index, twin))
                continue
            if at < oldest:
                # Too old only if new: a retry of a stored event is still answered
                # `duplicate` (write() tells which, with the stored twins in hand).
                item = Prepared(index=index, event=event, org=org, row={"content_hash": digest})
                item.too_old = f"older than {settings.backfill_max_age_days} days"
            else:
                row = _priced_row(index, event, org, at, now, digest, periods, book)
                item = Prepared(index=index, event=event, org=org, row=row)
        except DomainError as exc:
            if not partial:
                raise
            rejected.append((index, exc.message))
            continue
        seen[key] = item
        prepared.append(item)
    return PreparedBatch(
        events=prepared,
        repeats=repeats,
        size=len(batch.events),
        orgs={org.id: org for org in orgs if not isinstance(org, DomainError)},
        partial=partial,
        rejected=rejected,
    )


def write(
    session: Session,
    batches: list[PreparedBatch],
    candidates: Mapping[int, Sequence[LicenseTerms]],
    price_ids: dict[str, int] | None = None,
) -> list[IngestOutcome | DomainError]:
    """Insert-or-skip the events of several batches, in order, in the session's transaction.

    A batch with an id already used (stored, or by an earlier batch of the group) for
    other content fails alone with a 409 and claims none of its events; the others go on.
    In a partial batch only that event is refused (IngestOutcome.rejected).
    The caller holds the writer (SQLite) or the organizations' row locks (PostgreSQL), so
    no other transaction inserts these keys meanwhile.
    """
    stored = _stored_twins(session, [_key(item) for batch in batches for item in batch.events])
    room = LedgerRoom.read(
        session,
        sorted({org_id for batch in batches for org_id in batch.orgs}),
        sorted({lic.id for found in candidates.values() for lic in found}),
    )
    claimed: dict[Key, dict[str, Any]] = {}
    outcomes: list[IngestOutcome | DomainError] = []
    new_rows: list[dict[str, Any]] = []
    for batch in batches:
        try:
            outcome, rows = _claim(batch, stored, claimed, candidates)
            room.take(rows)
        except DomainError as exc:
            outcomes.append(exc)
            continue
        for row in rows:
            claimed[(row["organization_id"], row["external_id"])] = row
        new_rows += rows
        outcomes.append(outcome)
    # Key order: on PostgreSQL an insert waits on the unique keys another transaction holds.
    new_rows.sort(key=lambda row: (row["organization_id"], row["external_id"]))
    _insert(session, new_rows, price_ids)
    return outcomes


_MONTHLY = cast(Table, TokenUsageMonthly.__table__)
_LICENSE_USAGE = cast(Table, LicenseUsage.__table__)
_LICENSES = cast(Table, License.__table__)
# Every organization's all-time sums (token_usage_monthly holds them by month; the daily
# and license rollups are parts of them), and every license's credits: used (events plus
# adjustments) and of its events alone (what reconcile adds up).
_ORG_TOTALS = (
    select(
        _MONTHLY.c.organization_id,
        *(func.coalesce(func.sum(_MONTHLY.c[name]), 0) for name in ROLLUP_FIELDS),
    )
    .where(_MONTHLY.c.organization_id.in_(bindparam("orgs", expanding=True)))
    .group_by(_MONTHLY.c.organization_id)
)
_LICENSE_TOTALS = select(
    _LICENSES.c.id,
    _LICENSES.c.credits_used_micro,
    select(func.coalesce(func.sum(_LICENSE_USAGE.c.credits_micro), 0))
    .where(_LICENSE_USAGE.c.license_id == _LICENSES.c.id)
    .scalar_subquery(),
).where(_LICENSES.c.id.in_(bindparam("ids", expanding=True)))


@dataclass(slots=True)
class LedgerRoom:
    """What the sums the ledger keeps hold before a group, so that a batch that would
    carry one past int64 (the largest integer either database stores) is refused alone,
    in Python integers and before any SQL changes a row.

    An organization's all-time totals bound every rollup row of it (month, day, license)
    and every sum over them that a page or a budget reads; a license's credits bound its
    credits_used and what reconcile adds up. Read in two indexed queries per group, under
    the locks the group already holds (the writer on SQLite, the organizations' rows on
    PostgreSQL), so nothing else adds to them meanwhile.
    """

    orgs: dict[int, list[int]]  # organization: sums in the order of ROLLUP_FIELDS
    licenses: dict[int, list[int]]  # license: [credits used, credits of its events]

    @classmethod
    def read(cls, session: Session, org_ids: list[int], license_ids: list[int]) -> LedgerRoom:
        connection = session.connection()
        orgs: dict[int, list[int]] = {org_id: [0] * len(ROLLUP_FIELDS) for org_id in org_ids}
        if org_ids:
            for org_id, *sums in connection.execute(_ORG_TOTALS, {"orgs": org_ids}):
                orgs[org_id] = [int(value) for value in sums]
        found: dict[int, list[int]] = {}
        if license_ids:
            for license_id, used, of_events in connection.execute(
                _LICENSE_TOTALS, {"ids": license_ids}
            ):
                found[license_id] = [int(used), int(of_events)]
        return cls(orgs, found)

    def take(self, rows: list[dict[str, Any]]) -> None:
        """Count a batch's new events in, or refuse them all (409) if a sum would pass int64."""
        by_org: dict[int, list[int]] = {}
        by_license: dict[int, int] = {}
        for row in rows:
            sums = by_org.get(row["organization_id"])
            if sums is None:
                sums = by_org[row["organization_id"]] = [0] * 6
            sums[0] += row["input_tokens"]
            sums[1] += row["output_tokens"]
            sums[2] += row["cache_creation_input_tokens"]
            sums[3] += row["cache_read_input_tokens"]
            sums[4] += row["cost_nano"] or 0
            sums[5] += row["api_calls"]
            if row["license_id"] is not None:
                license_id = row["license_id"]
                by_license[license_id] = by_license.get(license_id, 0) + (row["credits_micro"] or 0)
        # Event counts (one per event) and unpriced counts never near the bound: not checked.
        for org_id, added in by_org.items():
            totals = self.orgs[org_id]
            for position, value in enumerate(added):
                if totals[position] + value > INT64_MAX:
                    raise _past_the_bound(f"organization {org_id}'s {ROLLUP_FIELDS[position]}")
        for license_id, credits in by_license.items():
            if any(total + credits > INT64_MAX for total in self.licenses[license_id]):
                raise _past_the_bound(f"license {license_id}'s credits used")
        for org_id, added in by_org.items():
            totals = self.orgs[org_id]
            for position, value in enumerate(added):
                totals[position] += value
        for license_id, credits in by_license.items():
            self.licenses[license_id] = [total + credits for total in self.licenses[license_id]]


def _past_the_bound(what: str) -> DomainError:
    return DomainError(
        409,
        "ledger_limit",
        f"this batch would carry {what} past {INT64_MAX}, the largest sum the ledger "
        "keeps: nothing of it was stored",
    )


def _claim(
    batch: PreparedBatch,
    stored: dict[Key, dict[str, Any]],
    claimed: dict[Key, dict[str, Any]],
    candidates: Mapping[int, Sequence[LicenseTerms]],
) -> tuple[IngestOutcome, list[dict[str, Any]]]:
    results: list[dict[str, Any] | None] = [None] * batch.size
    rows: list[dict[str, Any]] = []
    rejected: dict[int, str] = {}
    for item in batch.events:
        key = _key(item)
        previous = stored.get(key) or claimed.get(key)
        refusal: DomainError | None = None
        if previous is None and item.too_old is not None:
            refusal = _invalid(item.index, "timestamp", item.too_old)
        elif (
            previous is not None
            and previous["content_hash"] != item.row["content_hash"]
            and not item.call_id
        ):
            refusal = DomainError(
                409,
                "idempotency_conflict",
                f"events[{item.index}]: id {item.event.id!r} was already used for "
                "different content",
                details={"index": item.index, "id": item.event.id},
            )
        if refusal is not None:
            if not batch.partial:
                raise refusal
            rejected[item.index] = refusal.message
            continue
        if previous is None:
            row = item.row
            lic = licenses.in_force_at(candidates.get(item.org.id, []), row["timestamp"])
            row["license_id"] = lic.id if lic else None
            # Set either way: a group written again after a lost deadlock claims anew.
            row["credits_micro"] = (
                credits_for_cost(row["cost_nano"], lic.cost_per_credit_nano)
                if lic is not None and row["cost_nano"] is not None
                else None
            )
            rows.append(row)
            results[item.index] = _result(item, "created", row)
            continue
        results[item.index] = _result(item, "duplicate", previous)
    for index, first in batch.repeats:
        original = results[first.index]
        if original is None:  # refused in a partial batch: its copies with it
            rejected[index] = rejected[first.index]
            continue
        results[index] = {**original, "status": "duplicate"}
    final = [result for result in results if result is not None]
    return (
        IngestOutcome(
            results=final,
            organization_ids=sorted(batch.orgs),
            created=len(rows),
            duplicates=len(final) - len(rows),
            created_rows=rows,
            rejected=sorted(batch.rejected + list(rejected.items())),
        ),
        rows,
    )


def _key(item: Prepared) -> Key:
    return (item.org.id, item.event.id)


def _priced_row(
    index: int,
    event: UsageEventIn,
    org: OrgRef,
    at: datetime,
    now: datetime,
    digest: bytes,
    periods: _PeriodCache,
    book: PriceBook,
) -> dict[str, Any]:
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
        "license_id": None,
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
        "price_key": None,
        "price_id": None,
    }
    if event.cost_usd is not None:
        row["cost_nano"] = usd_to_nano(event.cost_usd)
        row["pricing"] = "provided"
        row["price_source"] = "caller"
        row["price_key"] = price_fingerprint(row)
    else:
        try:
            quote = book.quote(read.provider, event.model, tokens, at, read.context)
        except UsageError as exc:
            raise _invalid(index, "usage", str(exc)) from exc
        if quote is not None:
            if quote.cost_nano > MAX_EVENT_NANO:
                raise _invalid(
                    index,
                    "usage",
                    f"priced at {format_usd(quote.cost_nano)} USD, over the limit of "
                    f"{MAX_EVENT_USD} USD for one event",
                )
            row.update(price_fields(quote, read.unknown_units))
        row["price_key"] = price_fingerprint(row)
    return row


def _insert(session: Session, rows: list[dict[str, Any]], price_ids: dict[str, int] | None) -> None:
    if not rows:
        return
    assign_price_ids(session, rows, price_ids)
    if session.get_bind().dialect.name == "sqlite":
        _insert_sqlite(session, rows)
    else:
        # A plain insert: a key that appeared meanwhile fails the whole group (and the
        # caller retries its batches one by one) instead of being reported as created.
        session.execute(
            insert_for(session)(_EVENTS), [{name: row[name] for name in _COLUMNS} for row in rows]
        )


_COLUMNS = [column.name for column in _EVENTS.columns if column.name != "id"]
_JSON_COLUMNS = {"metadata", "usage_object"}
_TIME_COLUMNS = {"timestamp", "received_at"}
_CONVERTED = _JSON_COLUMNS | _TIME_COLUMNS
_SQLITE_INSERT = (
    f"INSERT INTO usage_events ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"
)


_ROW_VALUES = operator.itemgetter(*_COLUMNS)
_CONVERTED_AT = [(index, name) for index, name in enumerate(_COLUMNS) if name in _CONVERTED]


def _insert_sqlite(session: Session, rows: list[dict[str, Any]]) -> None:
    """Bind values as SQLAlchemy would on SQLite (the same text for times and JSON).

    Many rows share a value (the receipt time): each distinct object is converted once.
    """
    if not rows:
        return
    converted: dict[tuple[str, int], Any] = {}
    values: list[tuple[Any, ...]] = []
    for row in rows:
        value = list(_ROW_VALUES(row))
        for index, name in _CONVERTED_AT:
            given = value[index]
            if given is None:
                continue
            key = (name, id(given))
            found = converted.get(key)
            if found is None:
                # as db.Instant stores times on SQLite; JSON as SQLAlchemy's JSON type does
                found = converted[key] = (
                    to_micros(given) if name in _TIME_COLUMNS else json.dumps(given)
                )
            value[index] = found
        values.append(tuple(value))
    session.connection().exec_driver_sql(_SQLITE_INSERT, values)


_TWIN_COLUMNS = (
    "e.organization_id, e.external_id, e.content_hash, e.cost_nano, e.credits_micro, p.pricing"
)
_PRICE_JOIN = "JOIN usage_prices AS p ON p.id = e.price_id"
# The keys go in as one JSON array (SQLite) or two arrays (PostgreSQL), joined with the
# unique index: one statement for any number of events and organizations.
_TWINS_SQLITE = text(
    f"SELECT {_TWIN_COLUMNS} FROM json_each(:keys) AS k CROSS JOIN usage_events AS e "
    "ON e.organization_id = k.value ->> 0 AND e.external_id = k.value ->> 1 " + _PRICE_JOIN
)
_TWINS_POSTGRESQL = text(
    f"SELECT {_TWIN_COLUMNS} FROM unnest(CAST(:orgs AS integer[]), CAST(:ids AS text[])) "
    "AS k(org, ext) JOIN usage_events AS e ON e.organization_id = k.org "
    "AND e.external_id = k.ext " + _PRICE_JOIN
)


def _stored_twins(session: Session, keys: list[Key]) -> dict[Key, dict[str, Any]]:
    """The stored rows with these (organization, id) keys."""
    if not keys:
        return {}
    if session.get_bind().dialect.name == "sqlite":
        rows = session.connection().execute(_TWINS_SQLITE, {"keys": json.dumps(keys)})
    else:
        rows = session.connection().execute(
            _TWINS_POSTGRESQL, {"orgs": [k[0] for k in keys], "ids": [k[1] for k in keys]}
        )
    return {(row.organization_id, row.external_id): dict(row._mapping) for row in rows}


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
    can reach), so all instants of one UTC quarter hour share their local date. One cache
    per time zone lives as long as the process (bounded): nearly every event falls in a
    quarter hour an earlier request has seen.
    """

    def __init__(self, tz: Any) -> None:
        self.tz = tz
        self._cache: dict[int, tuple[str, str]] = {}

    def of(self, at: datetime) -> tuple[str, str]:
        bucket = int(at.timestamp()) // 900
        found = self._cache.get(bucket)
        if found is None:
            if len(self._cache) >= 100_000:
                self._cache.clear()
            found = self._cache[bucket] = (month_of(at, self.tz), day_of(at, self.tz))
        return found


_periods: dict[Any, _PeriodCache] = {}


def _period_cache(tz: Any) -> _PeriodCache:
    found = _periods.get(tz)
    if found is None:
        found = _periods[tz] = _PeriodCache(tz)
    return found


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
    by_license: dict[tuple[int, str], tuple[int, ...]] = {}
    for row in rows:
        cost = row["cost_nano"] or 0
        values = (
            row["input_tokens"],
            row["output_tokens"],
            row["cache_creation_input_tokens"],
            row["cache_read_input_tokens"],
            cost,
            row["api_calls"],
            1,
            int(row["pricing"] in INCOMPLETE_PRICING),
        )
        _add(monthly, (row["organization_id"], row["year_month"]), values)
        _add(daily, (row["organization_id"], row["day"], row["provider"], row["model"]), values)
        if row["license_id"] is not None:
            _add(
                by_license,
                (row["license_id"], row["year_month"]),
                (cost, row["credits_micro"] or 0, 1),
            )

    _upsert(session, TokenUsageMonthly, ("organization_id", "year_month"), ROLLUP_FIELDS, monthly)
    _upsert(
        session,
        UsageDaily,
        ("organization_id", "day", "provider", "model"),
        ROLLUP_FIELDS,
        daily,
    )
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
