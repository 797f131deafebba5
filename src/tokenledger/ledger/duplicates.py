"""Duplicate detection: which events of a group are new, which repeat a stored event (or
an earlier batch's) and which reuse an id for other content.

Owns the one query for the stored events with the group's (organization, id) keys, the
rule that tells `duplicate` from a 409 conflict (the digest of ledger.prepare; a call id
is never a conflict), and each event's answer. A new event is given its license in force
and its credits here, at claim time, so that a group written again claims anew.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import column, text
from sqlalchemy.orm import Session

from tokenledger.db import driver_read, read_rows
from tokenledger.errors import DomainError
from tokenledger.ledger.prepare import Key, Prepared, PreparedBatch, invalid
from tokenledger.licenses import service as licenses
from tokenledger.licenses.models import LicenseTerms
from tokenledger.money import credits_for_cost, format_credits, format_usd


@dataclass(slots=True)
class IngestOutcome:
    """What storing one batch came to: each event's answer and the rows it created."""

    results: list[dict[str, Any]]  # the shape of schemas.EventResult
    organization_ids: list[int]
    created: int
    duplicates: int
    created_rows: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (index, why), partial


# What is read of a stored event (its table's alias, the column), one row per event.
_STORED = (
    ("e", "organization_id"),
    ("e", "external_id"),
    ("e", "content_hash"),
    ("e", "cost_nano"),
    ("e", "credits_micro"),
    ("p", "pricing"),
)
_STORED_NAMES = tuple(name for _alias, name in _STORED)
_STORED_COLUMNS = ", ".join(f"{alias}.{name}" for alias, name in _STORED)
_PRICE_JOIN = "JOIN usage_prices AS p ON p.id = e.price_id"
# The keys go in as one JSON array (SQLite) or two arrays (PostgreSQL), joined with the
# unique index: one statement for any number of events and organizations. SQLite's goes
# straight to the driver (db.read_rows): every group of the writer reads it.
_STORED_SQLITE = driver_read(
    text(
        f"SELECT {_STORED_COLUMNS} FROM json_each(:keys) AS k CROSS JOIN usage_events AS e "
        "ON e.organization_id = k.value ->> 0 AND e.external_id = k.value ->> 1 " + _PRICE_JOIN
    ).columns(*(column(name) for name in _STORED_NAMES))
)
_STORED_POSTGRESQL = text(
    f"SELECT {_STORED_COLUMNS} FROM unnest(CAST(:orgs AS integer[]), CAST(:ids AS text[])) "
    "AS k(org, ext) JOIN usage_events AS e ON e.organization_id = k.org "
    "AND e.external_id = k.ext " + _PRICE_JOIN
)


def stored_events(session: Session, keys: list[Key]) -> dict[Key, dict[str, Any]]:
    """The stored rows with these (organization, id) keys."""
    if not keys:
        return {}
    rows: Sequence[Sequence[Any]]
    if session.get_bind().dialect.name == "sqlite":
        rows = read_rows(session, _STORED_SQLITE, {"keys": json.dumps(keys)})
    else:
        rows = (
            session.connection()
            .execute(
                _STORED_POSTGRESQL, {"orgs": [k[0] for k in keys], "ids": [k[1] for k in keys]}
            )
            .all()
        )
    return {(row[0], row[1]): dict(zip(_STORED_NAMES, row, strict=True)) for row in rows}


def claim(
    batch: PreparedBatch,
    stored: dict[Key, dict[str, Any]],
    claimed: dict[Key, dict[str, Any]],
    candidates: Mapping[int, Sequence[LicenseTerms]],
) -> tuple[IngestOutcome, list[dict[str, Any]]]:
    """One batch's new rows and answers against the stored events and those claimed by
    earlier batches of the group; a DomainError refuses the batch (a partial batch: the
    event)."""
    results: list[dict[str, Any] | None] = [None] * batch.size
    rows: list[dict[str, Any]] = []
    rejected: dict[int, str] = {}
    for item in batch.events:
        key = event_key(item)
        previous = stored.get(key) or claimed.get(key)
        refusal: DomainError | None = None
        if previous is None and item.too_old is not None:
            refusal = invalid(item.index, "timestamp", item.too_old)
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
            results[item.index] = answer_for(item, "created", row)
            continue
        results[item.index] = answer_for(item, "duplicate", previous)
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


def event_key(item: Prepared) -> Key:
    return (item.org.id, item.event.id)


def answer_for(item: Prepared, status: str, row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": item.event.id,
        "organization": item.org.slug,
        "status": status,
        "cost_usd": format_usd(row["cost_nano"]),
        "credits": format_credits(row["credits_micro"]),
        "pricing": row["pricing"],
    }
