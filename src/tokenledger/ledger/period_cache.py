"""The billing month and day of an event's instant, cached per quarter hour.

Owns only the cache; what a month or a day is (the billing time zone) is periods.py's.
Preparing a batch asks it for every event, so the zone arithmetic runs once per quarter
hour instead of once per event.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tokenledger.periods import day_of, month_of


class PeriodCache:
    """Billing month and day of instants, computed once per quarter hour.

    Every time zone's offset is a whole number of quarter hours (for the dates a backfill
    can reach), so all instants of one UTC quarter hour share their local date. One cache
    per time zone lives as long as the process (bounded): nearly every event falls in a
    quarter hour an earlier request has seen.
    """

    def __init__(self, tz: Any) -> None:
        self.tz = tz
        self._cache: dict[int, tuple[str, str]] = {}

    def of(self, at: datetime) -> tuple[str, str]:
        bucket = int(at.timestamp()) // 900
        found = self._cache.get(bucket)
        if found is None:
            if len(self._cache) >= 100_000:
                self._cache.clear()
            found = self._cache[bucket] = (month_of(at, self.tz), day_of(at, self.tz))
        return found


_periods: dict[Any, PeriodCache] = {}


def period_cache(tz: Any) -> PeriodCache:
    found = _periods.get(tz)
    if found is None:
        found = _periods[tz] = PeriodCache(tz)
    return found
