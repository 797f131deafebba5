"""Operator price overrides: stored rates, the price book built from them, audited changes."""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tokenledger.audit import service as audit
from tokenledger.db import utcnow
from tokenledger.errors import DomainError
from tokenledger.money import MoneyError, to_decimal
from tokenledger.pricing.engine import PriceBook, PriceOverride, Rates
from tokenledger.pricing.models import PriceOverrideRow

_RATE_FIELDS = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")
_NANO = Decimal(10**9)
_lock = threading.Lock()
_books: dict[tuple[Any, ...], PriceBook] = {}


def _to_nano_per_mtok(name: str, value: Any) -> int | None:
    if value is None:
        return None
    try:
        amount = to_decimal(value)
    except MoneyError as exc:
        raise DomainError(422, "invalid_rate", f"{name}: {exc}") from exc
    if amount < 0 or amount > 1_000_000:
        raise DomainError(422, "invalid_rate", f"{name}: must be between 0 and 1000000 USD/MTok")
    nano = amount * _NANO
    if nano != nano.to_integral_value():
        raise DomainError(422, "invalid_rate", f"{name}: at most 9 decimal places")
    return int(nano)


def _rate(nano: int | None) -> Decimal | None:
    return None if nano is None else Decimal(nano) / _NANO


def to_override(row: PriceOverrideRow) -> PriceOverride:
    return PriceOverride(
        provider=row.provider,
        model=row.model,
        rates=Rates(
            input=Decimal(row.input_nano_per_mtok) / _NANO,
            output=Decimal(row.output_nano_per_mtok) / _NANO,
            cache_write_5m=_rate(row.cache_write_5m_nano_per_mtok),
            cache_write_1h=_rate(row.cache_write_1h_nano_per_mtok),
            cache_read=_rate(row.cache_read_nano_per_mtok),
        ),
        version=f"override:{row.updated_at.isoformat()}",
    )


def price_book(session: Session) -> PriceBook:
    """The price book for the overrides now stored; reused while they do not change."""
    rows = list(session.scalars(select(PriceOverrideRow).order_by(PriceOverrideRow.id)).all())
    key = tuple((row.id, row.updated_at) for row in rows)
    book = _books.get(key)
    if book is None:
        book = PriceBook(to_override(row) for row in rows)
        with _lock:
            _books.clear()  # only the newest set of overrides is worth keeping
            _books[key] = book
    return book


def rates_json(row: PriceOverrideRow) -> dict[str, Any]:
    rates = to_override(row).rates
    return {
        "provider": row.provider,
        "model": row.model,
        **{name: _text(getattr(rates, name)) for name in _RATE_FIELDS},
        "updated_at": row.updated_at.isoformat(),
    }


def _text(value: Decimal | None) -> str | None:
    return None if value is None else f"{value.normalize():f}"


def list_overrides(session: Session) -> list[PriceOverrideRow]:
    return list(
        session.scalars(
            select(PriceOverrideRow).order_by(PriceOverrideRow.provider, PriceOverrideRow.model)
        ).all()
    )


def describe(session: Session) -> list[str]:
    rows = list_overrides(session)
    if not rows:
        return ["no price overrides; prices come from the bundled genai-prices data"]
    lines = []
    for row in rows:
        data = rates_json(row)
        rates = ", ".join(f"{name} {data[name]}" for name in _RATE_FIELDS if data[name])
        lines.append(f"{row.provider}/{row.model}: {rates} (USD per million tokens)")
    return lines


def set_override(
    session: Session,
    *,
    provider: str,
    model: str,
    rates: dict[str, Any],
    actor: str,
    client_address: str | None,
) -> PriceOverrideRow:
    provider, model = provider.strip().lower(), model.strip().lower()
    if not provider or not model:
        raise DomainError(422, "invalid_model", "provider and model are required")
    values = {name: _to_nano_per_mtok(name, rates.get(name)) for name in _RATE_FIELDS}
    if values["input"] is None or values["output"] is None:
        raise DomainError(422, "invalid_rate", "input and output rates are required")
    row = session.scalar(
        select(PriceOverrideRow).where(
            PriceOverrideRow.provider == provider, PriceOverrideRow.model == model
        )
    )
    before = rates_json(row) if row else None
    if row is None:
        row = PriceOverrideRow(provider=provider, model=model)
        session.add(row)
    row.input_nano_per_mtok = values["input"]
    row.output_nano_per_mtok = values["output"]
    row.cache_write_5m_nano_per_mtok = values["cache_write_5m"]
    row.cache_write_1h_nano_per_mtok = values["cache_write_1h"]
    row.cache_read_nano_per_mtok = values["cache_read"]
    row.updated_at = utcnow()
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="price_override.set",
        entity_type="price_override",
        entity_id=f"{provider}/{model}",
        before=before,
        after=rates_json(row),
        client_address=client_address,
    )
    return row


def unset_override(
    session: Session, *, provider: str, model: str, actor: str, client_address: str | None
) -> None:
    provider, model = provider.strip().lower(), model.strip().lower()
    row = session.scalar(
        select(PriceOverrideRow).where(
            PriceOverrideRow.provider == provider, PriceOverrideRow.model == model
        )
    )
    if row is None:
        raise DomainError(404, "price_override_not_found", f"no override for {provider}/{model}")
    before = rates_json(row)
    session.delete(row)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="price_override.unset",
        entity_type="price_override",
        entity_id=f"{provider}/{model}",
        before=before,
        after=None,
        client_address=client_address,
    )
