"""Repricing: events stored unpriced (or in a range an operator corrects) priced again with
the price now in force at their timestamps, in chunks (TOKENLEDGER_REPRICE_CHUNK_EVENTS),
each with its rollups, balances and alerts in one short transaction; a dry run first;
audit entries at the start and with the totals before and after.

Events the caller priced (`cost_usd`, price source "caller") are never repriced. An
event's tokens, provider, license and month stay as stored: only its price changes, so
each rollup moves by the difference of cost (and of unpriced events), and each license's
credits by the difference of credits, applied as atomic increments.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import Table, bindparam, func, or_, select, update
from sqlalchemy.orm import Session, contains_eager

from tokenledger.alerts import service as alerts
from tokenledger.audit import service as audit
from tokenledger.config import Settings
from tokenledger.db import Database
from tokenledger.errors import DomainError
from tokenledger.ledger import providers
from tokenledger.ledger.prices import assign_price_ids, price_fields, price_fingerprint
from tokenledger.ledger.rollups import ROLLUP_KEY
from tokenledger.licenses import service as licenses
from tokenledger.licenses.models import License
from tokenledger.money import credits_for_cost, format_credits, format_usd
from tokenledger.organizations import service as organizations
from tokenledger.organizations.models import Organization
from tokenledger.periods import utc_day_of
from tokenledger.pricing.engine import PriceBook, TokenUsage, UsageError
from tokenledger.pricing.overrides import price_book
from tokenledger.usage.models import (
    INCOMPLETE_PRICING,
    LicenseUsage,
    TokenUsageMonthly,
    UsageDaily,
    UsageEvent,
    UsagePrice,
    UsageUtcDaily,
)

E = UsageEvent
P = UsagePrice
# What repricing may change on an event; everything else stays as stored.
PRICE_COLUMNS = (
    "cost_nano",
    "credits_micro",
    "pricing",
    "price_source",
    "price_version",
    "priced_model",
    "rates",
    "unpriced_units",
)


@dataclass(frozen=True)
class Selection:
    """Which events: the unpriced ones, or one model's between two instants [start, end)."""

    unpriced: bool = False
    provider: str | None = None
    model: str | None = None
    start: datetime | None = None
    end: datetime | None = None

    def __post_init__(self) -> None:
        ranged = self.model is not None or self.start is not None or self.end is not None
        if self.unpriced == ranged:
            raise DomainError(
                422, "invalid_selection", "give either unpriced, or model with from and to"
            )
        if ranged:
            if self.model is None or self.start is None or self.end is None:
                raise DomainError(422, "invalid_selection", "a range needs model, from and to")
            if self.end <= self.start:
                raise DomainError(422, "invalid_selection", "to must be after from")

    def describe(self) -> str:
        if self.unpriced:
            return "unpriced"
        assert self.start is not None
        assert self.end is not None
        model = f"{self.provider}/{self.model}" if self.provider else str(self.model)
        return f"{model} {self.start.isoformat()}..{self.end.isoformat()}"


@dataclass
class Totals:
    events: int = 0  # events whose price changes
    cost_before_nano: int = 0
    cost_after_nano: int = 0
    credits_before_micro: int = 0
    credits_after_micro: int = 0
    unpriced_before: int = 0
    unpriced_after: int = 0

    def add(self, before: dict[str, Any], after: dict[str, Any]) -> None:
        self.events += 1
        self.cost_before_nano += before["cost_nano"] or 0
        self.cost_after_nano += after["cost_nano"] or 0
        self.credits_before_micro += before["credits_micro"] or 0
        self.credits_after_micro += after["credits_micro"] or 0
        self.unpriced_before += before["pricing"] in INCOMPLETE_PRICING
        self.unpriced_after += after["pricing"] in INCOMPLETE_PRICING

    def side(self, when: str) -> dict[str, Any]:
        return {
            "cost_usd": format_usd(getattr(self, f"cost_{when}_nano")) or "0.00",
            "credits": format_credits(getattr(self, f"credits_{when}_micro")) or "0.0",
            "unpriced_events": getattr(self, f"unpriced_{when}"),
        }

    def render(self) -> dict[str, Any]:
        return {"events": self.events, "before": self.side("before"), "after": self.side("after")}


@dataclass
class Outcome:
    dry_run: bool
    selection: str
    examined: int = 0
    totals: Totals = field(default_factory=Totals)
    by_organization: dict[int, Totals] = field(default_factory=lambda: defaultdict(Totals))
    slugs: dict[int, str] = field(default_factory=dict)
    new_alerts: int = 0

    def add(self, org_id: int, before: dict[str, Any], after: dict[str, Any]) -> None:
        self.totals.add(before, after)
        self.by_organization[org_id].add(before, after)

    def render(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "selection": self.selection,
            "examined": self.examined,
            "changed": self.totals.events,
            **{key: value for key, value in self.totals.render().items() if key != "events"},
            "organizations": [
                {
                    "organization_id": org_id,
                    "organization": self.slugs.get(org_id),
                    **totals.render(),
                }
                for org_id, totals in sorted(self.by_organization.items())
            ],
            "new_alerts": self.new_alerts,
        }


def reprice(
    database: Database,
    selection: Selection,
    *,
    settings: Settings,
    now: datetime,
    dry_run: bool,
    actor: audit.Actor,
) -> Outcome:
    """Price the selected events again, chunk by chunk; with dry_run, only say what would
    change.

    The events are read a chunk at a time by id (keyset), and priced outside any write
    transaction; each chunk that changes then commits in a short write transaction of
    its own (`_write_chunk`), so ingestion is served between chunks and memory stays that
    of one chunk. A run cut short leaves every chunk whole: a new run prices what is
    left, and the events already repriced are at their price and do not move again.
    Audited as a start entry with the first change and `pricing.reprice` with the totals.
    """
    outcome = Outcome(dry_run=dry_run, selection=selection.describe())
    size = settings.reprice_chunk_events
    with database.session(write=False) as session:
        book = price_book(session)
    after = 0
    started = False
    while True:
        with database.session(write=False) as session:
            events = _chunk(session, selection, after, size)
            rates = _rates(session, {event.license_id for event in events})
        if not events:
            break
        after = events[-1].id
        outcome.examined += len(events)
        plan = [
            (event, new)
            for event in events
            if (new := _priced(event, book, rates)) != _price_of(event)
        ]
        if not plan:
            continue
        if dry_run:
            for event, new in plan:
                outcome.add(event.organization_id, _price_of(event), new)
            continue
        # The run's start entry goes with its first change, in the same transaction.
        start = None if started else partial(_audit_start, selection, size, actor)
        changed, new_alerts = database.run_write(
            partial(
                _write_chunk,
                plan=plan,
                planned_rates=rates,
                book=book,
                settings=settings,
                now=now,
                start=start,
            )
        )
        started = started or bool(changed)
        outcome.new_alerts += new_alerts
        for org_id, old, new in changed:
            outcome.add(org_id, old, new)
    if outcome.by_organization:
        with database.session(write=False) as session:
            outcome.slugs = dict(
                session.execute(
                    select(Organization.id, Organization.slug).where(
                        Organization.id.in_(list(outcome.by_organization))
                    )
                ).all()
            )
    if not dry_run and outcome.totals.events:
        database.run_write(lambda session: _audit_finish(session, outcome, actor))
    return outcome


# An event as read, and its price columns with the price now in force.
Planned = tuple[UsageEvent, dict[str, Any]]
# What a chunk changed: (organization id, price columns before, after) per event.
Changed = list[tuple[int, dict[str, Any], dict[str, Any]]]


def _write_chunk(
    session: Session,
    *,
    plan: list[Planned],
    planned_rates: dict[int, int],
    book: PriceBook,
    settings: Settings,
    now: datetime,
    start: Callable[[Session], None] | None = None,
) -> tuple[Changed, int]:
    """One chunk's new prices, rollups, balances and alerts, in the session's transaction.

    db.py's lock order: the organizations, their licenses, then the event rows only (FOR
    UPDATE OF usage_events: the price rows they join stay unlocked for ingestion). An
    event that changed since it was priced (another repricing, a license's new rate) is
    priced again here, under the locks.
    """
    planned = {event.id: (event, new) for event, new in plan}
    organizations.lock(session, {event.organization_id for event, _ in plan})
    license_ids = sorted({event.license_id for event, _ in plan if event.license_id})
    rates: dict[int, int] = dict(
        session.execute(
            select(License.id, License.cost_per_credit_nano)
            .where(License.id.in_(license_ids))
            .order_by(License.id)
            .with_for_update()
        ).all()
    )
    fresh = session.scalars(
        select(E)
        .join(E.price)
        .options(contains_eager(E.price))
        .where(E.id.in_(list(planned)))
        .order_by(E.id)
        .with_for_update(of=E)
        .execution_options(populate_existing=True)
    ).all()
    changes: list[tuple[UsageEvent, dict[str, Any]]] = []
    changed: Changed = []
    for event in fresh:
        seen, new = planned[event.id]
        old = _price_of(event)
        lic = event.license_id
        if (
            old != _price_of(seen)
            or lic != seen.license_id
            or (lic is not None and rates.get(lic) != planned_rates.get(lic))
        ):
            new = _priced(event, book, rates)
        if new == old:
            continue
        changes.append((event, new))
        changed.append((event.organization_id, old, new))
    if not changes:
        return changed, 0
    if start is not None:
        start(session)
    _apply(session, changes)
    months: dict[int, set[str]] = defaultdict(set)
    for event, _new in changes:
        if event.license_id is not None:
            months[event.license_id].add(event.year_month)
    touched = sorted(months)
    new_alerts = 0
    for lic_row in session.scalars(select(License).where(License.id.in_(touched))):
        # A correction downwards re-arms thresholds; upwards, crossings alert now.
        new_alerts += len(alerts.rearm(session, lic_row, settings.timezone, now))
    new_alerts += len(alerts.evaluate(session, touched, settings.timezone, now, months))
    return changed, new_alerts


def _audit_start(selection: Selection, size: int, actor: audit.Actor, session: Session) -> None:
    """The run has begun to change events (with its first chunk, in its transaction)."""
    audit.record(
        session,
        actor=actor.email,
        action="pricing.reprice.start",
        entity_type="usage_events",
        entity_id=selection.describe()[:64],
        before=None,
        after={"selection": selection.describe(), "chunk_events": size},
        client_address=actor.address,
    )


def _audit_finish(session: Session, outcome: Outcome, actor: audit.Actor) -> None:
    """The run's totals before and after, once every chunk has committed."""
    audit.record(
        session,
        actor=actor.email,
        action="pricing.reprice",
        entity_type="usage_events",
        entity_id=outcome.selection[:64],
        before={"selection": outcome.selection, **outcome.totals.side("before")},
        after={
            "selection": outcome.selection,
            "events": outcome.totals.events,
            **outcome.totals.side("after"),
            "organizations": outcome.render()["organizations"],
        },
        client_address=actor.address,
    )


def _price_of(event: UsageEvent) -> dict[str, Any]:
    return {name: getattr(event, name) for name in PRICE_COLUMNS}


def _chunk(session: Session, selection: Selection, after: int, size: int) -> list[UsageEvent]:
    """Up to `size` selected events with ids above `after`, in id order, with their price
    rows; never the caller-priced ones."""
    # What the price was lives in usage_prices (one row per distinct price).
    query = (
        select(E)
        .join(E.price)
        .options(contains_eager(E.price))
        .where(P.pricing != "provided", or_(P.price_source.is_(None), P.price_source != "caller"))
    )
    if selection.unpriced:
        query = query.where(P.pricing.in_(INCOMPLETE_PRICING))
    else:
        assert selection.model is not None
        query = query.where(
            func.lower(P.model) == selection.model.strip().lower(),
            E.timestamp >= selection.start,
            E.timestamp < selection.end,
        )
        if selection.provider:
            query = query.where(P.provider == selection.provider.strip().lower())
    return list(session.scalars(query.where(E.id > after).order_by(E.id).limit(size)).all())


def _rates(session: Session, license_ids: set[int | None]) -> dict[int, int]:
    """Cost per credit of these licenses."""
    ids = sorted(lid for lid in license_ids if lid is not None)
    if not ids:
        return {}
    return dict(
        session.execute(
            select(License.id, License.cost_per_credit_nano).where(License.id.in_(ids))
        ).all()
    )


def _stored_usage(event: UsageEvent) -> tuple[TokenUsage, dict[str, str], tuple[str, ...]]:
    """The usage as read when the event was written: its usage object, or its counts."""
    if event.usage_object:
        provider = None if event.provider == providers.UNKNOWN_PROVIDER else event.provider
        # reread: the shape stored with the object (a flat event's Anthropic fields of an
        # OpenAI model are still Anthropic's meaning)
        reading = providers.reread(provider, event.usage_object)
        return reading.tokens, reading.context, reading.unknown_units
    tokens = TokenUsage(
        input_tokens=event.input_tokens,
        output_tokens=event.output_tokens,
        cache_creation_input_tokens=event.cache_creation_input_tokens,
        cache_read_input_tokens=event.cache_read_input_tokens,
        cache_write_1h_tokens=event.cache_write_1h_tokens,
    )
    return tokens, {}, ()


def _priced(event: UsageEvent, book: PriceBook, rates: dict[int, int]) -> dict[str, Any]:
    """The price columns of the event with the price now in force at its timestamp
    (`rates`: the cost per credit of its license)."""
    try:
        tokens, context, unknown = _stored_usage(event)
    except providers.UsageReadError:
        # A stored object this version cannot read: the event stays as it is.
        return _price_of(event)
    provider = event.provider
    if provider == providers.UNKNOWN_PROVIDER:
        # Nobody knew the model when it was written; an override may name it now.
        provider = book.provider_for(event.model) or provider
    try:
        quote = book.quote(provider, event.model, tokens, event.timestamp, context)
    except UsageError:
        # Counts no price can take (ingestion refuses them): the event stays as it is.
        return _price_of(event)
    new: dict[str, Any] = {"credits_micro": None, **price_fields(quote, unknown)}
    if event.license_id is not None and new["cost_nano"] is not None:
        new["credits_micro"] = credits_for_cost(new["cost_nano"], rates[event.license_id])
    return new


def _apply(session: Session, changes: list[tuple[UsageEvent, dict[str, Any]]]) -> None:
    """The new prices on the events, and each difference on every rollup and balance."""
    monthly: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0])
    daily: dict[tuple[int, str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    utc_daily: dict[tuple[int, str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    by_license: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0])
    credits: dict[int, int] = defaultdict(int)
    for event, new in changes:
        cost = (new["cost_nano"] or 0) - (event.cost_nano or 0)
        unpriced = int(new["pricing"] in INCOMPLETE_PRICING) - int(
            event.pricing in INCOMPLETE_PRICING
        )
        credit = (new["credits_micro"] or 0) - (event.credits_micro or 0)
        for key, target in (
            ((event.organization_id, event.year_month), monthly),
            ((event.organization_id, event.day, event.provider, event.model), daily),
            (
                (event.organization_id, utc_day_of(event.timestamp), event.provider, event.model),
                utc_daily,
            ),
        ):
            target[key][0] += cost  # type: ignore[index]
            target[key][1] += unpriced  # type: ignore[index]
        if event.license_id is not None:
            by_license[(event.license_id, event.year_month)][0] += cost
            by_license[(event.license_id, event.year_month)][1] += credit
            credits[event.license_id] += credit
    # The event's provider and model stay as stored; its price row is the new price's.
    prices = [{"provider": event.provider, "model": event.model, **new} for event, new in changes]
    for price in prices:
        price["price_key"] = price_fingerprint(price)
    assign_price_ids(session, prices)
    for (event, new), price in zip(changes, prices, strict=True):
        event.cost_nano = new["cost_nano"]
        event.credits_micro = new["credits_micro"]
        event.unpriced_units = new["unpriced_units"]
        event.price_id = price["price_id"]
    session.flush()
    for event, _new in changes:
        session.expire(event, ["price"])
    _add(session, TokenUsageMonthly, ("organization_id", "year_month"), monthly, "unpriced_events")
    _add(session, UsageDaily, ROLLUP_KEY, daily, "unpriced_events")
    _add(session, UsageUtcDaily, ROLLUP_KEY, utc_daily, "unpriced_events")
    _add(session, LicenseUsage, ("license_id", "year_month"), by_license, "credits_micro")
    licenses.add_credits_used(session, credits)


def _add(
    session: Session,
    model: Any,
    keys: tuple[str, ...],
    deltas: dict[Any, list[int]],
    second: str,
) -> None:
    """cost_nano and `second` of existing rollup rows moved by their differences."""
    rows = [
        {**{f"k_{name}": value for name, value in zip(keys, key, strict=True)}, "d0": d0, "d1": d1}
        for key, (d0, d1) in sorted(deltas.items())
        if d0 or d1
    ]
    if not rows:
        return
    table: Table = model.__table__
    statement = (
        update(table)
        .where(*(table.c[name] == bindparam(f"k_{name}") for name in keys))
        .values(
            cost_nano=table.c.cost_nano + bindparam("d0"),
            **{second: table.c[second] + bindparam("d1")},
        )
    )
    session.execute(statement, rows)
