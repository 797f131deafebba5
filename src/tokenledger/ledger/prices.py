"""A price's stored identity: the price columns of an event row, their fingerprint, and
the usage_prices row each distinct price is interned as (ingestion and repricing)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from tokenledger.db import insert_for
from tokenledger.pricing.engine import PriceQuote
from tokenledger.usage.models import UsagePrice


def price_fields(quote: PriceQuote | None, unknown_units: tuple[str, ...]) -> dict[str, Any]:
    """An event row's price columns for a quote (None: unpriced), and the usage units no
    price covers (the quote's and the ones the usage reader did not know)."""
    if quote is None:
        return {
            "cost_nano": None,
            "pricing": "unpriced",
            "price_source": None,
            "price_version": None,
            "priced_model": None,
            "rates": None,
            "unpriced_units": ",".join(unknown_units) or None,
        }
    unpriced = quote.unpriced_units + unknown_units
    return {
        "cost_nano": quote.cost_nano,
        # A cost that leaves out a unit the call used is never shown as complete.
        "pricing": "partially_priced" if unpriced else "priced",
        "price_source": quote.source,
        "price_version": quote.version,
        "priced_model": quote.priced_model,
        "rates": quote.rates,
        "unpriced_units": ",".join(unpriced) or None,
    }


_PRICE_FIELDS = (
    "provider",
    "model",
    "pricing",
    "price_source",
    "price_version",
    "priced_model",
    "rates",
)
_fingerprints: dict[tuple[Any, ...], str] = {}


def price_fingerprint(row: dict[str, Any]) -> str:
    """The identity of the row's price (usage_prices.fingerprint): a digest of its fields."""
    rates = row["rates"]
    key = (
        *(row[name] for name in _PRICE_FIELDS[:-1]),
        tuple(sorted(rates.items())) if rates else None,
    )
    found = _fingerprints.get(key)
    if found is None:
        canonical = json.dumps([row[name] for name in _PRICE_FIELDS], sort_keys=True)
        found = hashlib.sha256(canonical.encode()).hexdigest()
        if len(_fingerprints) >= 100_000:  # callers may send any model names: bounded
            _fingerprints.clear()
        _fingerprints[key] = found
    return found


_PRICES = cast(Table, UsagePrice.__table__)


# Bound on a writer's memory of price ids: callers may send any model names.
MAX_KNOWN_PRICES = 100_000


def assign_price_ids(
    session: Session, rows: list[dict[str, Any]], known: dict[str, int] | None = None
) -> None:
    """Set each row's price_id, adding the prices not stored yet (no query when `known`,
    a writer's memory of committed price rows, has them all).

    usage_prices rows are never changed or deleted, so an id read before this transaction
    added any is good for as long as the database lives; ids this transaction adds are
    learned by the next group, once committed.
    """
    wanted = {row["price_key"]: row for row in rows}
    if not wanted:
        return
    ids = {key: known[key] for key in wanted if key in known} if known else {}
    missing = sorted(wanted.keys() - ids.keys())
    if missing:
        found: dict[str, int] = dict(session.connection().execute(_select_price_ids(missing)).all())
        if known is not None:
            if len(known) + len(found) > MAX_KNOWN_PRICES:
                known.clear()
            known.update(found)
        ids.update(found)
        missing = sorted(set(missing) - found.keys())
    if missing:
        session.execute(
            insert_for(session)(_PRICES).on_conflict_do_nothing(index_elements=["fingerprint"]),
            [
                {"fingerprint": key, **{name: wanted[key][name] for name in _PRICE_FIELDS}}
                for key in missing
            ],
        )
        ids.update(session.connection().execute(_select_price_ids(missing)).all())
    for row in rows:
        row["price_id"] = ids[row["price_key"]]


def _select_price_ids(fingerprints: list[str]) -> Any:
    return select(_PRICES.c.fingerprint, _PRICES.c.id).where(
        _PRICES.c.fingerprint.in_(fingerprints)
    )
