"""The periodic provider sync of a server process (TOKENLEDGER_PROVIDER_SYNC_INTERVAL_MINUTES).

Every worker process may run one; the database decides who syncs: a round first takes the
provider's lease (provider_sync_leases), then syncs only when the last sync of that
provider began at least an interval ago. A worker that dies holds the lease until it runs
out (service.LEASE_SECONDS).
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from datetime import datetime, timedelta

from sqlalchemy import func, select

from tokenledger.config import Settings
from tokenledger.db import Clock, Database, utcnow
from tokenledger.errors import DomainError
from tokenledger.provider_reports import service
from tokenledger.provider_reports.models import PROVIDERS, ProviderSync

log = logging.getLogger("tokenledger.provider_reports")


def configured_providers(settings: Settings) -> list[str]:
    keys = {"anthropic": settings.anthropic_admin_key, "openai": settings.openai_admin_key}
    return [name for name in PROVIDERS if (key := keys[name]) and key.get_secret_value()]


def last_started(database: Database, provider: str) -> datetime | None:
    with database.session(write=False) as session:
        found: datetime | None = session.scalar(
            select(func.max(ProviderSync.started_at)).where(ProviderSync.provider == provider)
        )
        return found


class ProviderSyncWorker:
    """A background thread syncing the last provider_sync_days UTC days of every provider
    with an admin key, once per interval across all processes."""

    def __init__(self, database: Database, settings: Settings, clock: Clock = utcnow) -> None:
        self.database = database
        self.settings = settings
        self.clock = clock
        self.interval = timedelta(minutes=settings.provider_sync_interval_minutes)
        self.holder = f"worker-{os.getpid()}-{secrets.token_hex(4)}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="provider-sync", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def run_once(self) -> list[service.SyncResult]:
        """One round: each configured provider that is due is synced by this process,
        unless another holds its lease."""
        done = []
        for provider in configured_providers(self.settings):
            now = self.clock()
            if not service.claim_lease(self.database, provider, self.holder, now):
                continue
            try:
                started = last_started(self.database, provider)
                if started is not None and now - started < self.interval:
                    continue
                first, last = service.default_range(now, self.settings.provider_sync_days)
                done.append(
                    service.sync(
                        self.database,
                        self.settings,
                        provider,
                        first,
                        last,
                        now,
                        actor="periodic sync",
                        holder=self.holder,
                    )
                )
            except DomainError as exc:
                log.warning("periodic sync of %s: %s", provider, exc.message)
            finally:
                service.release_lease(self.database, provider, self.holder)
        return done

    def _run(self) -> None:
        # A look every minute at most: the interval is judged against the database.
        wait = min(60.0, self.interval.total_seconds())
        while not self._stop.wait(wait):
            try:
                self.run_once()
            except Exception:
                log.exception("periodic provider sync failed")
