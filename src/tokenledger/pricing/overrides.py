"""Operator price overrides by effective date: stored rates, the price book built from them,
audited changes.

An override is in force for events whose timestamp lies in [valid_from, valid_until); an
event outside every override of its model is priced from the bundled data, so a price
correction never rewrites the history before it. Overrides of one model never overlap.
"""

from __future__ import annotations

import threading
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from genai_prices.types import Tier, TieredPrices
from sqlalchemy import func, or_, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tokenledger.audit import service as audit
from tokenledger.db import utcnow
from tokenledger.errors import DomainError
from tokenledger.money import MoneyError, decimal_places, to_decimal
from tokenledger.pricing.engine import PriceBook, PriceOverride, PriceQuote, Rates, TokenUsage
from tokenledger.pricing.models import PriceOverrideRow
from tokenledger.pricing.schemas import UnpricedModel
from tokenledger.usage.models import INCOMPLETE_PRICING, UsageEvent, UsagePrice

RATE_FIELDS = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")
_NANO = Decimal(10**9)
_MAX_RATE = Decimal(1_000_000)
_lock = threading.Lock()
_books: dict[tuple[Any, ...], PriceBook] = {}


def _to_rate(name: str, value: Any) -> Decimal | None:
    """USD per million tokens (or per 1000 units), exact to a nano-dollar."""
    if value is None:
        return None
    try:
        amount = to_decimal(value)
    except MoneyError as exc:
        raise DomainError(422, "invalid_rate", f"{name}: {exc}") from exc
    if amount < 0 or amount > _MAX_RATE:
        raise DomainError(422, "invalid_rate", f"{name}: must be between 0 and 1000000 USD")
    if decimal_places(amount) > 9:
        raise DomainError(422, "invalid_rate", f"{name}: at most 9 decimal places")
    return amount


def _to_nano(amount: Decimal | None) -> int | None:
    return None if amount is None else int(amount * _NANO)


def _rate(nano: int | None) -> Decimal | None:
    return None if nano is None else Decimal(nano) / _NANO


def _text(value: Decimal | None) -> str | None:
    return None if value is None else f"{value.normalize():f}"


def _tiered(base: Decimal | None, tiers: list[dict[str, Any]], name: str) -> Any:
    """A rate with its long-context tiers, as genai-prices writes its own."""
    steps = [
        Tier(start=int(tier["above_prompt_tokens"]), price=Decimal(tier[name]))
        for tier in tiers
        if tier.get(name) is not None
    ]
    if base is None or not steps:
        return base
    return TieredPrices(base=base, tiers=steps)


def to_override(row: PriceOverrideRow) -> PriceOverride:
    tiers = row.tiers or []
    rates = {
        "input": _rate(row.input_nano_per_mtok),
        "output": _rate(row.output_nano_per_mtok),
        "cache_write_5m": _rate(row.cache_write_5m_nano_per_mtok),
        "cache_write_1h": _rate(row.cache_write_1h_nano_per_mtok),
        "cache_read": _rate(row.cache_read_nano_per_mtok),
    }
    # A cache rate left unset but named in a tier starts from the rate the engine would fall
    # back to: writes and reads to input, 1-hour writes to 5-minute writes.
    for name, fallback in (
        ("cache_write_5m", "input"),
        ("cache_write_1h", "cache_write_5m"),
        ("cache_read", "input"),
    ):
        if rates[name] is None and any(name in tier for tier in tiers):
            rates[name] = rates[fallback] if rates[fallback] is not None else rates["input"]
    return PriceOverride(
        provider=row.provider,
        model=row.model,
        rates=Rates(
            **{name: _tiered(rate, tiers, name) for name, rate in rates.items()},
            units={key: Decimal(value) for key, value in (row.unit_rates or {}).items()},
        ),
        version=f"override:{row.valid_from.isoformat()}:{row.updated_at.isoformat()}",
    )


@dataclass(frozen=True, slots=True)
class _Dated:
    valid_from: datetime
    valid_until: datetime | None
    book: PriceBook


class DatedPriceBook(PriceBook):
    """genai-prices' bundled prices, and the overrides each in force over its own dates."""

    def __init__(self, rows: Iterable[PriceOverrideRow]) -> None:
        super().__init__()
        dated: dict[tuple[str, str], list[_Dated]] = defaultdict(list)
        self._model_providers: dict[str, str] = {}
        for row in rows:
            override = to_override(row)
            # A book of one override prices its model exactly as overrides always did.
            dated[(row.provider, row.model)].append(
                _Dated(row.valid_from, row.valid_until, PriceBook([override]))
            )
        for (provider, model), spans in sorted(dated.items()):
            spans.sort(key=lambda span: span.valid_from)
            self._model_providers.setdefault(model, provider)
        self._dated = dict(dated)
        self._starts = {key: [span.valid_from for span in spans] for key, spans in dated.items()}

    def _in_force(self, provider: str, model: str, at: datetime) -> PriceBook | None:
        key = (provider.strip().lower(), model.lower())
        spans = self._dated.get(key)
        if spans is None:
            return None
        position = bisect_right(self._starts[key], at) - 1
        if position < 0:
            return None
        span = spans[position]
        if span.valid_until is not None and at >= span.valid_until:
            return None
        return span.book

    def quote(
        self,
        provider: str,
        model: str,
        usage: TokenUsage,
        at: datetime,
        context: Mapping[str, str] | None = None,
    ) -> PriceQuote | None:
        book = self._in_force(provider, model, at)
        if book is not None:
            return book.quote(provider, model, usage, at, context)
        return super().quote(provider, model, usage, at, context)

    def known(self, provider: str, model: str, at: datetime) -> bool:
        return self._in_force(provider, model, at) is not None or super().known(provider, model, at)

    def provider_for(self, model: str) -> str | None:
        return self._model_providers.get(model.lower()) or super().provider_for(model)


def price_book(session: Session) -> PriceBook:
    """The price book for the overrides now stored; reused while they do not change."""
    rows = list(session.scalars(select(PriceOverrideRow).order_by(PriceOverrideRow.id)).all())
    key = tuple((row.id, row.updated_at, row.valid_from, row.valid_until) for row in rows)
    book = _books.get(key)
    if book is None:
        book = DatedPriceBook(rows)
        with _lock:
            _books.clear()  # only the newest set of overrides is worth keeping
            _books[key] = book
    return book


def rates_json(row: PriceOverrideRow) -> dict[str, Any]:
    return {
        "provider": row.provider,
        "model": row.model,
        "valid_from": row.valid_from.isoformat(),
        "valid_until": row.valid_until.isoformat() if row.valid_until else None,
        "input": _text(_rate(row.input_nano_per_mtok)),
        "output": _text(_rate(row.output_nano_per_mtok)),
        "cache_write_5m": _text(_rate(row.cache_write_5m_nano_per_mtok)),
        "cache_write_1h": _text(_rate(row.cache_write_1h_nano_per_mtok)),
        "cache_read": _text(_rate(row.cache_read_nano_per_mtok)),
        "tiers": row.tiers or [],
        "units": row.unit_rates or {},
        "updated_at": row.updated_at.isoformat(),
    }


def list_overrides(session: Session) -> list[PriceOverrideRow]:
    return list(
        session.scalars(
            select(PriceOverrideRow).order_by(
                PriceOverrideRow.provider, PriceOverrideRow.model, PriceOverrideRow.valid_from
            )
        ).all()
    )


def describe(session: Session) -> list[str]:
    rows = list_overrides(session)
    if not rows:
        return ["no price overrides; prices come from the bundled genai-prices data"]
    lines = []
    for row in rows:
        data = rates_json(row)
        rates = ", ".join(f"{name} {data[name]}" for name in RATE_FIELDS if data[name])
        until = data["valid_until"] or "open-ended"
        extra = "".join(
            f"; above {tier['above_prompt_tokens']} prompt tokens: "
            + ", ".join(f"{name} {tier[name]}" for name in RATE_FIELDS if tier.get(name))
            for tier in data["tiers"]
        )
        units = "".join(f"; {key} {value}" for key, value in sorted(data["units"].items()))
        lines.append(
            f"{row.provider}/{row.model} from {data['valid_from']} until {until}: "
            f"{rates}{extra}{units} (USD per million tokens, units per 1000)"
        )
    return lines


def _normalized_tiers(tiers: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if not tiers:
        return None
    result = []
    previous = -1
    for index, tier in enumerate(tiers):
        unknown = set(tier) - {"above_prompt_tokens", *RATE_FIELDS}
        if unknown:
            raise DomainError(422, "invalid_tier", f"tiers[{index}]: unknown {sorted(unknown)}")
        start = tier.get("above_prompt_tokens")
        if type(start) is not int or start <= previous:
            raise DomainError(
                422,
                "invalid_tier",
                f"tiers[{index}].above_prompt_tokens: a whole number above the previous tier's",
            )
        previous = start
        rates = {
            name: _text(_to_rate(f"tiers[{index}].{name}", tier.get(name)))
            for name in RATE_FIELDS
            if tier.get(name) is not None
        }
        if not rates:
            raise DomainError(422, "invalid_tier", f"tiers[{index}]: give at least one rate")
        result.append({"above_prompt_tokens": start, **rates})
    return result


def _normalized_units(units: Mapping[str, Any] | None) -> dict[str, str] | None:
    if not units:
        return None
    result = {}
    for key, value in units.items():
        rate = _to_rate(f"units.{key}", value)
        assert rate is not None
        try:
            Rates(input=Decimal(0), output=Decimal(0), units={key: rate})
        except ValueError as exc:
            raise DomainError(422, "invalid_unit", f"units.{key}: {exc}") from exc
        result[key] = _text(rate) or "0"
    return result


def _overlap(valid_from: datetime, valid_until: datetime | None, other: PriceOverrideRow) -> bool:
    ends_after_start = other.valid_until is None or other.valid_until > valid_from
    starts_before_end = valid_until is None or other.valid_from < valid_until
    return ends_after_start and starts_before_end


def set_override(
    session: Session,
    *,
    provider: str,
    model: str,
    rates: dict[str, Any],
    actor: audit.Actor,
    valid_from: datetime | None = None,
    valid_until: datetime | None = None,
    tiers: list[dict[str, Any]] | None = None,
    units: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> PriceOverrideRow:
    """Set the price of a model from `valid_from` (default: now) until `valid_until`,
    audited (price_override.set, and price_override.end for one it ends).

    The same start replaces that override. An open-ended override that began earlier ends
    where the new one begins; any other overlap is refused (409). A refusal writes nothing:
    what can be checked is checked before the first change, and a concurrent overlap the
    database refuses undoes this call's changes (a savepoint).
    """
    provider, model = provider.strip().lower(), model.strip().lower()
    if not provider or not model:
        raise DomainError(422, "invalid_model", "provider and model are required")
    values = {name: _to_rate(name, rates.get(name)) for name in RATE_FIELDS}
    if values["input"] is None or values["output"] is None:
        raise DomainError(422, "invalid_rate", "input and output rates are required")
    start = (valid_from or now or utcnow()).astimezone(UTC)
    end = valid_until.astimezone(UTC) if valid_until is not None else None
    if end is not None and end <= start:
        raise DomainError(422, "invalid_validity", "valid_until must be after valid_from")
    tier_list = _normalized_tiers(tiers)
    unit_rates = _normalized_units(units)

    lock_model(session, provider, model)
    existing = list(
        session.scalars(
            select(PriceOverrideRow)
            .where(PriceOverrideRow.provider == provider, PriceOverrideRow.model == model)
            .order_by(PriceOverrideRow.valid_from)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).all()
    )
    row = next((other for other in existing if other.valid_from == start), None)
    ends = [other for other in existing if other is not row and _overlap(start, end, other)]
    for other in ends:
        if not (other.valid_from < start and other.valid_until is None):
            raise DomainError(
                409,
                "overlapping_override",
                f"{provider}/{model} has an override from {other.valid_from.isoformat()} until "
                f"{other.valid_until.isoformat() if other.valid_until else 'open-ended'}: "
                "choose dates that do not overlap it",
            )
    # The real clock, not `now`: updated_at is part of a price's version, which must change
    # with every change, also when a caller's clock stands still.
    changed_at = utcnow()
    fields: dict[str, Any] = {
        "valid_until": end,
        "input_nano_per_mtok": int(values["input"] * _NANO),
        "output_nano_per_mtok": int(values["output"] * _NANO),
        "cache_write_5m_nano_per_mtok": _to_nano(values["cache_write_5m"]),
        "cache_write_1h_nano_per_mtok": _to_nano(values["cache_write_1h"]),
        "cache_read_nano_per_mtok": _to_nano(values["cache_read"]),
        "tiers": tier_list,
        "unit_rates": unit_rates,
        "updated_at": changed_at,
    }
    try:
        # The engine accepts it, or nothing is stored (a row outside the session).
        to_override(PriceOverrideRow(provider=provider, model=model, valid_from=start, **fields))
    except ValueError as exc:
        raise DomainError(422, "invalid_rate", str(exc)) from exc

    ended = [(other, rates_json(other)) for other in ends]
    before = rates_json(row) if row else None
    with session.begin_nested():
        for other in ends:
            other.valid_until = start
            other.updated_at = changed_at
        # The earlier override's end first: the database checks the rule row by row.
        _flush(session, provider, model)
        if row is None:
            row = PriceOverrideRow(provider=provider, model=model, valid_from=start)
            session.add(row)
        for name, value in fields.items():
            setattr(row, name, value)
        _flush(session, provider, model)
    for other, other_before in ended:
        _audit(session, actor, "price_override.end", other, other_before)
    _audit(session, actor, "price_override.set", row, before)
    return row


def lock_model(session: Session, provider: str, model: str) -> None:
    """Changes to one model's overrides take turns (PostgreSQL: a transaction-scoped
    advisory lock per model, held with no other lock). Without it, two overlapping
    overrides sent at once both found no other and were both stored; the database's
    exclusion constraint now refuses that too, but the lock makes the second see the
    first, as if they had come one after the other. SQLite's one writer already does."""
    if session.get_bind().dialect.name != "postgresql":
        return
    session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
        {"key": f"price_override:{provider}/{model}"},
    )


def _flush(session: Session, provider: str, model: str) -> None:
    try:
        session.flush()
    except IntegrityError as exc:
        if "ex_price_overrides_no_overlap" not in str(exc.orig):
            raise
        raise DomainError(
            409,
            "overlapping_override",
            f"{provider}/{model} has an override in force in these dates: "
            "choose dates that do not overlap it",
        ) from exc


def _audit(
    session: Session,
    actor: audit.Actor,
    action: str,
    row: PriceOverrideRow,
    before: dict[str, Any] | None,
) -> None:
    audit.record(
        session,
        actor=actor.email,
        action=action,
        entity_type="price_override",
        entity_id=row.id,  # provider, model and dates are in before and after
        before=before,
        after=rates_json(row),
        client_address=actor.address,
    )


def unset_override(
    session: Session,
    *,
    provider: str,
    model: str,
    actor: audit.Actor,
    valid_from: datetime | None = None,
) -> int:
    """Remove a model's override starting at `valid_from`, or all of them, each audited;
    returns how many."""
    provider, model = provider.strip().lower(), model.strip().lower()
    lock_model(session, provider, model)
    query = select(PriceOverrideRow).where(
        PriceOverrideRow.provider == provider, PriceOverrideRow.model == model
    )
    if valid_from is not None:
        query = query.where(PriceOverrideRow.valid_from == valid_from.astimezone(UTC))
    rows = list(session.scalars(query).all())
    if not rows:
        raise DomainError(404, "price_override_not_found", f"no override for {provider}/{model}")
    for row in rows:
        before, row_id = rates_json(row), row.id
        session.delete(row)
        session.flush()
        audit.record(
            session,
            actor=actor.email,
            action="price_override.unset",
            entity_type="price_override",
            entity_id=row_id,
            before=before,
            after=None,
            client_address=actor.address,
        )
    return len(rows)


def unpriced_models(session: Session) -> list[UnpricedModel]:
    """Models and units nobody could price: unpriced and partially priced events."""
    rows = session.execute(
        select(
            UsagePrice.provider,
            UsagePrice.model,
            UsagePrice.pricing,
            UsageEvent.unpriced_units,
            func.count(),
            func.min(UsageEvent.timestamp),
            func.max(UsageEvent.timestamp),
        )
        .select_from(UsageEvent)
        .join(UsagePrice, UsagePrice.id == UsageEvent.price_id)
        # The first condition is the partial index's: incomplete events are within it.
        .where(
            or_(UsageEvent.cost_nano.is_(None), UsageEvent.unpriced_units.is_not(None)),
            UsagePrice.pricing.in_(INCOMPLETE_PRICING),
        )
        .group_by(
            UsagePrice.provider, UsagePrice.model, UsagePrice.pricing, UsageEvent.unpriced_units
        )
    ).all()
    groups: dict[tuple[str, str, str], UnpricedModel] = {}
    for provider, model, pricing, units, count, first, last in rows:
        names = units.split(",") if units else []
        group = groups.get((provider, model, pricing))
        if group is None:
            groups[(provider, model, pricing)] = UnpricedModel(
                provider=provider,
                model=model,
                pricing=pricing,
                units=sorted(set(names)),
                events=count,
                first_seen=first,
                last_seen=last,
            )
            continue
        group.units = sorted(set(group.units) | set(names))
        group.events += count
        group.first_seen = min(group.first_seen, first)
        group.last_seen = max(group.last_seen, last)
    return sorted(groups.values(), key=lambda group: (-group.events, group.provider, group.model))
