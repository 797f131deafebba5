"""The raw insert of new event rows, in the caller's transaction.

Owns how rows reach usage_events: their prices interned first (ledger.prices), then on
SQLite one executemany of plain driver SQL with values bound as SQLAlchemy would bind
them (each distinct time or JSON object converted once, as many rows share one), on PostgreSQL
SQLAlchemy's insert. It decides nothing about which rows are new (ledger.duplicates).
"""

from __future__ import annotations

import json
import operator
from typing import Any

from sqlalchemy.orm import Session

from tokenledger.db import insert_for, to_micros
from tokenledger.ledger.prices import assign_price_ids
from tokenledger.usage.models import UsageEvent

_EVENTS = UsageEvent.__table__


def insert_events(
    session: Session, rows: list[dict[str, Any]], price_ids: dict[str, int] | None
) -> None:
    """Store the new rows (their prices interned first: assign_price_ids)."""
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
