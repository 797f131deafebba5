"""`tokenledger provider-sync`: one sync from the command line, its outcome in a few lines."""

from __future__ import annotations

from datetime import timedelta

from tokenledger.config import Settings
from tokenledger.db import Database, utcnow
from tokenledger.provider_reports import service


def provider_sync(
    database: Database, settings: Settings, provider: str, start: str | None, end: str | None
) -> int:
    """Sync the given UTC days (default: the last provider_sync_days days, today included)."""
    now = utcnow()
    first, last = service.default_range(now, settings.provider_sync_days)
    if end:
        last = service.parse_day(end)
    if start:
        first = service.parse_day(start)
    elif end:
        first = last - timedelta(days=settings.provider_sync_days - 1)
    result = service.sync(database, settings, provider, first, last, now, actor="cli")
    print(
        f"{provider}: {result.days} UTC days {result.first_day} to {result.last_day}, "
        f"{result.rows} report rows (sync {result.sync_id})"
    )
    if result.partial_days:
        print(f"partial (not over yet): {', '.join(result.partial_days)}")
    if result.alerts:
        print(f"provider.drift alerts raised: {len(result.alerts)}")
    return 0
