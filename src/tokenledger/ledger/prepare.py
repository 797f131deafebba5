"""Preparing a batch: everything about it that needs no lock, done in the request before
the writer takes it.

Owns each event's organization (organizations.refs' rule, as the event's own error), the
timestamp bounds, the digest a reused id is compared by, repeats inside the batch, and
pricing a row (the provider's usage object read, the price book's quote, the caller's
cost). What is stored, and what is a duplicate of a stored event, is decided later under
the lock (ledger.store); nothing here reads the database.

A batch is all or nothing (POST /api/v1/usage), or partial (POST /v1/traces, whose
protocol reports refused spans beside the stored ones): then an event refused for its own
reason is left out and listed in `rejected`, and the rest of its batch goes on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tokenledger.config import Settings
from tokenledger.errors import DomainError
from tokenledger.ledger import providers
from tokenledger.ledger.period_cache import PeriodCache, period_cache
from tokenledger.ledger.prices import price_fields, price_fingerprint
from tokenledger.money import MAX_EVENT_USD, format_usd, usd_to_nano
from tokenledger.organizations import refs
from tokenledger.organizations.refs import OrgRef
from tokenledger.pricing.engine import PriceBook, UsageError
from tokenledger.usage.schemas import UsageBatch, UsageEventIn

MAX_FUTURE = timedelta(minutes=5)
MAX_EVENT_NANO = usd_to_nano(MAX_EVENT_USD)

# An event's identity in the ledger: (organization id, the event's id).
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


def invalid(index: int, field_name: str, message: str) -> DomainError:
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
    return invalid(index, "organization", message)


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
    periods = period_cache(settings.timezone)
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
                raise invalid(index, "timestamp", "more than 5 minutes in the future")
            digest = content_hash(event, org.id)
            key = (org.id, event.id)
            earlier = seen.get(key)
            if earlier is not None:
                if earlier.row["content_hash"] != digest:
                    raise DomainError(
                        409,
                        "idempotency_conflict",
                        f"events[{index}]: id {event.id!r} appears twice with different content",
                        details={"index": index, "id": event.id},
                    )
                repeats.append((index, earlier))
                continue
            if at < oldest:
                # Too old only if new: a retry of a stored event is still answered
                # `duplicate` (ledger.duplicates tells which, with the stored events in hand).
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


def _priced_row(
    index: int,
    event: UsageEventIn,
    org: OrgRef,
    at: datetime,
    now: datetime,
    digest: bytes,
    periods: PeriodCache,
    book: PriceBook,
) -> dict[str, Any]:
    year_month, day = periods.of(at)
    try:
        read = providers.event_usage(event, book)
    except providers.UsageReadError as exc:
        raise invalid(index, "usage", str(exc)) from exc
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
            raise invalid(index, "usage", str(exc)) from exc
        if quote is not None:
            if quote.cost_nano > MAX_EVENT_NANO:
                raise invalid(
                    index,
                    "usage",
                    f"priced at {format_usd(quote.cost_nano)} USD, over the limit of "
                    f"{MAX_EVENT_USD} USD for one event",
                )
            row.update(price_fields(quote, read.unknown_units))
        row["price_key"] = price_fingerprint(row)
    return row
