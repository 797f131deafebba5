"""Storing a group of prepared batches: insert-or-skip, in order, in one transaction.

Owns the order of the steps under the lock: the stored events read once for the whole
group (ledger.duplicates), each batch claimed and checked against the int64 bound
(ledger.bounds), then one insert (ledger.insert). Round trips per group are constant: one
query for the stored events, two for the totals, one insert, however many batches.
Rollups come after, once per group (ledger.rollups).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.orm import Session

from tokenledger.errors import DomainError
from tokenledger.ledger.bounds import LedgerRoom
from tokenledger.ledger.duplicates import IngestOutcome, claim, event_key, stored_events
from tokenledger.ledger.insert import insert_events
from tokenledger.ledger.prepare import Key, PreparedBatch
from tokenledger.licenses.models import LicenseTerms


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
    stored = stored_events(session, [event_key(item) for batch in batches for item in batch.events])
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
            outcome, rows = claim(batch, stored, claimed, candidates)
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
    insert_events(session, new_rows, price_ids)
    return outcomes
