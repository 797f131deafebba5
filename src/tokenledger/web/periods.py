"""The period each consumption bar counts, in words: credits over the license's term, the
USD budget over the month or the term (its budget_period)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from tokenledger.licenses.models import LicenseTerms
from tokenledger.periods import month_bounds, month_of
from tokenledger.web.i18n import Formatter


def license_term(fmt: Formatter, now: datetime, lic: LicenseTerms) -> dict[str, Any]:
    """The license's term: its days, and when it ends (none when open-ended)."""
    start_day = lic.valid_from.astimezone(fmt.tz).date()
    if lic.valid_until is None:
        return {"kind": "license", "label": None, "since": fmt.day(start_day), "resets": None}
    last_day = (lic.valid_until.astimezone(fmt.tz) - timedelta(microseconds=1)).date()
    return {
        "kind": "license",
        "label": fmt.interval(start_day, last_day),
        "since": None,
        "resets": fmt.relative(lic.valid_until - now),
    }


def bar_periods(fmt: Formatter, now: datetime, lic: LicenseTerms | None) -> dict[str, Any] | None:
    """Per bar ("credits", "usd"), the period it counts now; None without a license."""
    if lic is None:
        return None
    term = license_term(fmt, now, lic)
    if lic.budget_period != "monthly":
        return {"credits": term, "usd": term}
    start, end = month_bounds(month_of(now, fmt.tz), fmt.tz)
    month = {
        "kind": "monthly",
        "label": fmt.interval(start.date(), (end - timedelta(days=1)).date()),
        "since": None,
        "resets": fmt.relative(end - now),
    }
    return {"credits": term, "usd": month}
