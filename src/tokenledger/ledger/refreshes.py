"""Refresh runs: their outcome, and the completed-run count of each billing month."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tokenledger.db import insert_for
from tokenledger.errors import DomainError
from tokenledger.organizations import service as organizations
from tokenledger.organizations.models import Organization
from tokenledger.periods import month_of
from tokenledger.usage.models import Refresh, TokenUsageMonthly
from tokenledger.usage.schemas import PRINTABLE, RefreshIn

_MONTHLY = TokenUsageMonthly.__table__


def _count(session: Session, org_id: int, year_month: str, delta: int) -> None:
    insert = insert_for(session)
    statement = insert(_MONTHLY).values(
        organization_id=org_id,
        year_month=year_month,
        refresh_count=delta,
        input_tokens=0,
        output_tokens=0,
        cache_creation_tokens=0,
        cache_read_tokens=0,
        cost_nano=0,
        api_calls=0,
        event_count=0,
        unpriced_events=0,
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["organization_id", "year_month"],
            set_={"refresh_count": _MONTHLY.c.refresh_count + delta},
        )
    )


def record_refresh(
    session: Session, org: Organization, refresh_id: str, data: RefreshIn, tz: Any, now: datetime
) -> Refresh:
    """Create or update a run; a run counts once, in the month its completion falls in."""
    if not refresh_id or len(refresh_id) > 128 or not PRINTABLE.match(refresh_id):
        raise DomainError(
            422,
            "invalid_refresh_id",
            "refresh_id must have 1 to 128 characters, none of them a control character",
        )
    organizations.lock(session, [org.id])  # db.py's lock order: the organization first
    insert = insert_for(session)
    session.execute(
        insert(Refresh.__table__)
        .values(
            organization_id=org.id,
            refresh_id=refresh_id,
            status=data.status,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["organization_id", "refresh_id"])
    )
    refresh = session.scalar(
        select(Refresh)
        .where(Refresh.organization_id == org.id, Refresh.refresh_id == refresh_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    assert refresh is not None
    refresh.status = data.status
    if data.started_at is not None:
        refresh.started_at = data.started_at
    elif refresh.started_at is None and data.status == "running":
        refresh.started_at = now
    if data.status in ("completed", "failed"):
        refresh.finished_at = data.finished_at or refresh.finished_at or now
    if (
        refresh.started_at is not None
        and refresh.finished_at is not None
        and refresh.finished_at < refresh.started_at
    ):
        raise DomainError(422, "invalid_refresh", "finished_at is before started_at")
    counted = (
        month_of(refresh.finished_at, tz)
        if data.status == "completed" and refresh.finished_at is not None
        else None
    )
    if counted != refresh.counted_month:
        changes = {refresh.counted_month: -1, counted: 1}
        # Months in order, as a usage batch takes them, so that the two cannot deadlock.
        for month, delta in sorted((m, d) for m, d in changes.items() if m is not None):
            _count(session, org.id, month, delta)
        refresh.counted_month = counted
    refresh.updated_at = now
    session.flush()
    return refresh
