"""The unit of work of usage ingestion: events, rollups, holds, alerts and budget states.

`record_usage` is the whole write of a group of ingest requests, in the caller's one
transaction: the group commit (ledger/writer.py) runs it for every request that arrived
while the previous group was being written; demo data and tests run it for one batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from tokenledger.alerts import service as alerts
from tokenledger.auth.models import ApiKey
from tokenledger.budgets import service as budgets
from tokenledger.config import Settings
from tokenledger.errors import DomainError
from tokenledger.ledger.duplicates import IngestOutcome
from tokenledger.ledger.prepare import PreparedBatch, prepare
from tokenledger.ledger.rollups import roll_up
from tokenledger.ledger.store import write
from tokenledger.licenses import service as licenses
from tokenledger.organizations import refs
from tokenledger.organizations import service as organizations
from tokenledger.pricing.overrides import price_book
from tokenledger.usage.schemas import UsageBatch


@dataclass(slots=True)
class UsageAnswer:
    """What POST /api/v1/usage answers for one batch (schemas.UsageResponse's shape)."""

    results: list[dict[str, Any]]
    budgets: list[dict[str, Any]]
    created: int
    duplicates: int
    # Events a partial batch left out: (index in the batch, why).
    rejected: list[tuple[int, str]] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        return {"results": self.results, "budgets": self.budgets}


def record_usage(
    session: Session,
    batches: list[PreparedBatch],
    settings: Settings,
    now: datetime,
    price_ids: dict[str, int] | None = None,
) -> list[UsageAnswer | DomainError]:
    """Store a group of prepared batches; an answer (or the refusal) for each, in order.

    A batch refused for its own reason (an id reused for other content) stores nothing;
    the others are written. `price_ids`: the writer's memory of stored prices
    (prices.assign_price_ids). Then, once for the group: rollups and credits, the holds the
    new events settle, alerts for the licenses they reached, and every organization's
    budget state after the group, from the figures read once.
    """
    org_ids = sorted({org_id for batch in batches for org_id in batch.orgs})
    # The lock order of db.py: organizations, then their licenses. Two groups touching the
    # same organizations run one after the other (no unique-key waits, no deadlocks), and
    # the stored events read next cannot change before the insert.
    organizations.lock(session, org_ids)
    candidates = licenses.candidates_for(session, org_ids, lock=True)
    outcomes = write(session, batches, candidates, price_ids)
    created_rows = [
        row
        for outcome in outcomes
        if isinstance(outcome, IngestOutcome)
        for row in outcome.created_rows
    ]
    roll_up(session, created_rows)
    by_id = {lic.id: lic for found in candidates.values() for lic in found}
    budgets.settle_reservations(session, created_rows, now)
    keys = sorted({batch.touch_key_id for batch in batches if batch.touch_key_id is not None})
    if keys:
        session.execute(update(ApiKey).where(ApiKey.id.in_(keys)).values(last_used_at=now))

    # The licenses whose figures changed, and the ones governing each organization now.
    touched = {row["license_id"] for row in created_rows if row["license_id"]}
    governing = {org_id: budgets.governing(candidates[org_id], now) for org_id in org_ids}
    wanted = touched | {lic.id for lic, _ in governing.values() if lic is not None}
    figures = budgets.figures_for(
        session, [by_id[i] for i in sorted(wanted)], settings.timezone, now
    )
    # Back-dated usage is judged in its own month too (monthly budgets).
    months = alerts.months_by_license(created_rows)
    alerts.record_crossings(
        session, [figures[i] for i in sorted(touched)], settings.timezone, now, months
    )

    answers: list[UsageAnswer | DomainError] = []
    for batch, outcome in zip(batches, outcomes, strict=True):
        if isinstance(outcome, DomainError):
            answers.append(outcome)
            continue
        states = []
        for org_id in outcome.organization_ids:
            lic, suspended = governing[org_id]
            fig = figures.get(lic.id) if lic is not None else None
            states.append(budgets.render_state(batch.orgs[org_id], fig, suspended))
        answers.append(
            UsageAnswer(
                results=outcome.results,
                budgets=states,
                created=outcome.created,
                duplicates=outcome.duplicates,
                rejected=outcome.rejected,
            )
        )
    return answers


def record_batch(
    session: Session,
    batch: UsageBatch,
    *,
    key_org_id: int | None,
    settings: Settings,
    now: datetime,
) -> UsageAnswer:
    """One batch in the caller's own transaction (demo data, scripts, tests): the group
    commit's unit of work for this one batch; its answer, or the refusal."""
    prepared = prepare(
        batch,
        key_org_id=key_org_id,
        organizations=refs.in_session(session),
        book=price_book(session),
        settings=settings,
        now=now,
    )
    (answer,) = record_usage(session, [prepared], settings, now)
    if isinstance(answer, DomainError):
        raise answer
    return answer
