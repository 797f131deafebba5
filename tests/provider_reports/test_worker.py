"""The periodic sync: one sync per interval across processes, through the lease."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from tests.conftest import NOW, FixedClock
from tests.provider_reports.standin import StandIn
from tests.provider_reports.test_anthropic import provider_reports

from tokenledger.config import Settings
from tokenledger.db import Database
from tokenledger.provider_reports import service
from tokenledger.provider_reports.models import ProviderReportDay, ProviderSync
from tokenledger.provider_reports.worker import ProviderSyncWorker


def syncs(database: Database) -> int:
    with database.session(write=False) as session:
        return session.scalar(select(func.count()).select_from(ProviderSync)) or 0


def test_two_workers_sync_once_per_interval(
    database: Database, settings: Settings, standin: StandIn
) -> None:
    provider_reports(standin)
    periodic = settings.model_copy(
        update={"provider_sync_interval_minutes": 10, "openai_admin_key": None}
    )
    clock = FixedClock(NOW)
    first, second = (
        ProviderSyncWorker(database, periodic, clock),
        ProviderSyncWorker(database, periodic, clock),
    )
    done = first.run_once()
    assert [(r.first_day, r.last_day) for r in done] == [("2026-11-16", "2026-11-18")]
    assert second.run_once() == []  # the other process synced less than 10 minutes ago
    clock.now = NOW + timedelta(minutes=10)
    assert len(second.run_once()) == 1
    assert syncs(database) == 2
    with database.session(write=False) as session:
        days = list(session.scalars(select(ProviderReportDay).order_by(ProviderReportDay.day)))
    assert [(d.day, d.partial) for d in days] == [
        ("2026-11-16", False),
        ("2026-11-17", False),
        ("2026-11-18", True),
    ]


def test_a_held_lease_makes_the_round_skip(
    database: Database, settings: Settings, standin: StandIn
) -> None:
    provider_reports(standin)
    periodic = settings.model_copy(
        update={"provider_sync_interval_minutes": 10, "openai_admin_key": None}
    )
    assert service.claim_lease(database, "anthropic", "the command line", NOW)
    assert ProviderSyncWorker(database, periodic, FixedClock(NOW)).run_once() == []
    assert syncs(database) == 0
    # The lease runs out (a holder that died): the next round syncs.
    later = NOW + timedelta(seconds=service.LEASE_SECONDS + 1)
    assert len(ProviderSyncWorker(database, periodic, FixedClock(later)).run_once()) == 1
