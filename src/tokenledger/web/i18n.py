"""Languages of the UI: gettext catalogs through Babel, and numbers, money and dates per locale.

The catalogs are the committed .po files, compiled in memory on first use: there is no
build step to forget, and a missing translation shows the English text.
"""

from __future__ import annotations

import io
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import cache, lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from babel import Locale
from babel.dates import format_date, format_datetime, format_interval, format_timedelta
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_currency, format_decimal
from babel.support import NullTranslations, Translations

from tokenledger.money import micro_to_credits, nano_to_usd

LANGUAGES = ("en", "de")
DEFAULT_LANGUAGE = "en"
LANGUAGE_NAMES = {"en": "English", "de": "Deutsch"}
TRANSLATIONS_DIR = Path(__file__).parent / "translations"
DOMAIN = "messages"
DASH = "\u2013"  # shown for a missing figure


def N_(message: str) -> str:
    """Marks a message for extraction; it is translated where it is shown."""
    return message


@cache
def translations(language: str) -> NullTranslations:
    po = TRANSLATIONS_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po"
    if language == DEFAULT_LANGUAGE or not po.exists():
        return NullTranslations()
    with po.open("rb") as handle:
        catalog = read_po(handle, locale=language, domain=DOMAIN)
    compiled = io.BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return Translations(compiled, domain=DOMAIN)


def negotiate(cookie: str | None, accept_language: str | None) -> str:
    """The language of a request: a chosen one (cookie), else the browser's preference."""
    if cookie in LANGUAGES:
        return cookie
    preferred = []
    for part in (accept_language or "").split(","):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        if tag:
            preferred.append((quality, tag.strip().replace("_", "-")))
    preferred.sort(key=lambda item: -item[0])
    for quality, tag in preferred:
        base = tag.split("-")[0].lower()
        if quality > 0 and base in LANGUAGES:
            return base
    return DEFAULT_LANGUAGE


class Formatter:
    """Numbers, money, credits and dates for one locale and the billing time zone."""

    def __init__(self, language: str, tz: ZoneInfo) -> None:
        self.language = language
        self.locale = Locale.parse(language)
        self.tz = tz

    def number(self, value: int | Decimal | None) -> str:
        if value is None:
            return DASH
        if type(value) is int:
            # Whole numbers (token counts, calls: most of a table's cells) by Python's own
            # grouping with the locale's separator, what Babel writes for "#,##0", about
            # 30 times faster.
            return f"{value:,}".replace(",", _group_symbol(self.language))
        return format_decimal(value, locale=self.locale)

    def usd(self, amount: Decimal | None, places: int = 2) -> str:
        if amount is None:
            return DASH
        return _usd_text(self.language, amount, places)

    def nano(self, nano: int | None, places: int = 2) -> str:
        """nano-USD as money, rounded for display (half even) to `places`."""
        return DASH if nano is None else self.usd(nano_to_usd(nano), places)

    def credits(self, micro: int | None) -> str:
        if micro is None:
            return DASH
        value = micro_to_credits(micro).quantize(Decimal("0.1"))
        return format_decimal(value, format="#,##0.0", locale=self.locale)

    def credits_text(self, text: str | None) -> str:
        """Credits given as exact decimal text (as the API writes them)."""
        if text is None:
            return DASH
        value = Decimal(text).quantize(Decimal("0.1"))
        return format_decimal(value, format="#,##0.0", locale=self.locale)

    def percent(self, value: float | Decimal | None) -> str:
        if value is None:
            return DASH
        text = format_decimal(Decimal(str(value)), format="#,##0.0", locale=self.locale)
        return f"{text}\u202f%"

    def month(self, year_month: str, width: str = "MMM y") -> str:
        year, month = (int(part) for part in year_month.split("-"))
        return _date_text(self.language, date(year, month, 1), width)

    def month_long(self, year_month: str) -> str:
        return self.month(year_month, "MMMM y")

    def month_short(self, year_month: str) -> str:
        return self.month(year_month, "MMM")

    def day(self, day: str | date) -> str:
        value = date.fromisoformat(day) if isinstance(day, str) else day
        return _date_text(self.language, value, "medium")

    def last_day(self, end: datetime | str) -> str:
        """The last day of a period that ends at this instant (exclusive), in the time zone."""
        at = datetime.fromisoformat(end) if isinstance(end, str) else end
        return self.day((at.astimezone(self.tz) - timedelta(microseconds=1)).date())

    def day_short(self, day: str) -> str:
        return _date_text(self.language, date.fromisoformat(day), "d")

    def datetime(self, at: datetime | None) -> str:
        if at is None:
            return DASH
        return format_datetime(at.astimezone(self.tz), "short", tzinfo=self.tz, locale=self.locale)

    def interval(self, start: date, end: date) -> str:
        return format_interval(start, end, "yMMMd", locale=self.locale)

    def relative(self, delta: timedelta) -> str:
        return format_timedelta(delta, add_direction=True, threshold=1.5, locale=self.locale)


@cache
def _group_symbol(language: str) -> str:
    symbol: str = Locale.parse(language).number_symbols["latn"]["group"]
    return symbol


@lru_cache(maxsize=8192)
def _usd_text(language: str, amount: Decimal, places: int) -> str:
    """Babel's currency format (kept: the pages show the same amounts many times over)."""
    locale = Locale.parse(language)
    pattern = None
    if places != 2:
        base: str = locale.currency_formats["standard"].pattern
        pattern = base.replace("0.00", "0." + "0" * places)
    text: str = format_currency(
        amount, "USD", format=pattern, locale=locale, currency_digits=places == 2
    )
    return text


@lru_cache(maxsize=8192)
def _date_text(language: str, day: date, pattern: str) -> str:
    text: str = format_date(day, pattern, locale=Locale.parse(language))
    return text


def formatter(language: str, tz: ZoneInfo) -> Formatter:
    return Formatter(language, tz)


def gettext_for(language: str) -> Any:
    return translations(language).gettext
