"""Billing months and days: calendar periods in the billing time zone, one rule for all."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from zoneinfo import ZoneInfo


def month_of(at: datetime, tz: ZoneInfo) -> str:
    return at.astimezone(tz).strftime("%Y-%m")


def day_of(at: datetime, tz: ZoneInfo) -> str:
    return at.astimezone(tz).strftime("%Y-%m-%d")


_UTC_DAYS: dict[int, str] = {}


def utc_day_of(at: datetime) -> str:
    """The UTC day of an instant: the day of the providers' reports (usage_utc_daily).

    Kept per day number (ingestion asks it for every event; strftime is the slow part).
    """
    number = int(at.timestamp() // 86_400)
    found = _UTC_DAYS.get(number)
    if found is None:
        if len(_UTC_DAYS) >= 100_000:
            _UTC_DAYS.clear()
        found = _UTC_DAYS[number] = at.astimezone(UTC).strftime("%Y-%m-%d")
    return found


@functools.lru_cache(maxsize=1024)
def month_bounds(year_month: str, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """The first instant of the month and of the next, in the billing time zone.

    Kept (a pure function of its arguments): the overview asks it for every organization.
    """
    year, month = (int(part) for part in year_month.split("-"))
    start = datetime(year, month, 1, tzinfo=tz)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=tz)
    return start, end
