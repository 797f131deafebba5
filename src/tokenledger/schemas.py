"""Schemas shared by every domain."""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Path, Query
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    StringConstraints,
    WithJsonSchema,
)

from tokenledger.money import MAX_EVENT_USD, MoneyError, decimal_places, to_decimal

T = TypeVar("T")

# No identifier, name or label holds a control character: C0 (NUL to US), DEL, and C1
# (U+0080 to U+009F, NEL among them). PostgreSQL cannot store NUL at all.
PRINTABLE = r"^[^\x00-\x1f\x7f-\x9f]*$"

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def refuse_controls(value: Any) -> Any:
    """Before any stripping (str.strip takes NEL for a space): a control is refused."""
    if isinstance(value, str) and _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


# Text a caller gives: ids, names, slugs, labels. Lengths are set where it is used.
Text = Annotated[StrictStr, StringConstraints(pattern=PRINTABLE)]
# The same rule for text in a path or a query.
PathText = Annotated[str, Path(min_length=1, max_length=128, pattern=PRINTABLE)]
QueryText = Annotated[str | None, Query(max_length=200, pattern=PRINTABLE)]

# Every instant a caller gives (usage timestamps, refresh times, license validity, price
# override dates, reprice and export ranges, months) lies in one range: from the start of
# 1970 up to, not including, the start of 9000 (UTC). Far from datetime's own ends (years
# 1 and 9999), so that no offset, billing time zone or month arithmetic can leave them.
EARLIEST_INSTANT = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_INSTANT = datetime(9000, 1, 1, tzinfo=UTC)  # exclusive
INSTANT_RANGE = "from 1970-01-01T00:00:00Z up to (not including) 9000-01-01T00:00:00Z"
# A month (YYYY-MM) of that range.
MONTH_PATTERN = r"^(19[7-9][0-9]|[2-8][0-9]{3})-(0[1-9]|1[0-2])$"
# RFC 3339's date-time (T or space, Z or a numeric offset with a colon); the ISO 8601
# variants that datetime.fromisoformat also takes (week dates, basic format) are refused.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def check_instant(value: datetime) -> datetime:
    """An aware datetime inside the documented range, else ValueError."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("needs an offset (Z or +01:00)")
    # The year first: comparing year 1 (+01:00) or 9999-12-31 (-01:00) converts it to UTC,
    # which datetime cannot hold.
    if not EARLIEST_INSTANT.year - 1 <= value.year <= LATEST_INSTANT.year or not (
        EARLIEST_INSTANT <= value < LATEST_INSTANT
    ):
        raise ValueError(f"must lie {INSTANT_RANGE}")
    return value


def parse_instant(value: Any) -> datetime:
    """RFC 3339 text with an offset, in the documented range; numbers are refused."""
    if isinstance(value, datetime):  # built in Python (demo data, tests), not from JSON
        return check_instant(value)
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 date-time string, e.g. 2026-01-31T12:00:00Z")
    try:
        if not _RFC3339.fullmatch(value):
            raise ValueError(value)
        parsed = datetime.fromisoformat(value.upper())
    except ValueError as exc:
        raise ValueError("must be an RFC 3339 timestamp, e.g. 2026-01-31T12:00:00Z") from exc
    return check_instant(parsed)


_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_day(value: Any) -> date:
    """A calendar day as YYYY-MM-DD text, inside the range of instants; else ValueError."""
    if isinstance(value, date) and not isinstance(value, datetime):
        day = value
    elif not isinstance(value, str) or not _DAY.fullmatch(value):
        raise ValueError("must be a date, YYYY-MM-DD")
    else:
        day = date.fromisoformat(value)
    if not EARLIEST_INSTANT.date() <= day < LATEST_INSTANT.date():
        raise ValueError(f"must lie {INSTANT_RANGE}")
    return day


# The one type of every calendar day a request gives (provider report ranges).
Day = Annotated[
    date,
    BeforeValidator(parse_day),
    Field(description=f"YYYY-MM-DD, {INSTANT_RANGE}"),
]

# The one type of every instant a request gives (JSON bodies, queries).
Instant = Annotated[
    datetime,
    BeforeValidator(parse_instant),
    Field(description=f"RFC 3339 date-time with an offset, {INSTANT_RANGE}"),
]

# The rules of an organization reference, which the schema cannot express alone.
ORGANIZATION_RULE = (
    "The organization's slug or id. Required with a service key (one of no organization); "
    "with an organization's own key it may be left out, and if given must be that "
    "organization (else 403)."
)
# The rule between the two ends of a range.
RANGE_RULE = "'to' must be after 'from' (422 otherwise)."

MAX_JSON_DEPTH = 16


def _plain_json(value: Any, depth: int = 0) -> None:
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("text must not contain NUL")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("numbers must be finite (no NaN or Infinity)")
    elif isinstance(value, dict):
        for key, item in value.items():
            _plain_json(key, depth + 1)
            _plain_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _plain_json(item, depth + 1)


def _plain_json_object(value: dict[str, Any]) -> dict[str, Any]:
    _plain_json(value)
    return value


# A small JSON object a caller attaches (metadata): standard JSON that every database
# and reader takes the same way: no NUL in keys or text, finite numbers, little nesting.
JsonObject = Annotated[dict[str, Any], AfterValidator(_plain_json_object)]


class InputModel(BaseModel):
    """Request bodies: unknown fields are refused (422)."""

    model_config = ConfigDict(extra="forbid")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


# Every integer in a query has a documented maximum: past it the answer is a 422, never a
# number the database cannot bind (SQLite and PostgreSQL stop at 64 bits).
MAX_LIMIT = 500
MAX_OFFSET = 1_000_000_000
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"at most {MAX_LIMIT}")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description=f"at most {MAX_OFFSET}")]


MAX_TOKENS = 10**9
# A count of tokens a caller gives (usage events, holds).
TokenCount = Annotated[StrictInt, Field(ge=0, le=MAX_TOKENS)]


def parse_usd(value: Any) -> Decimal:
    try:
        amount = to_decimal(value)
    except MoneyError as exc:
        raise ValueError(str(exc)) from exc
    if amount < 0:
        raise ValueError("must not be negative")
    if amount > MAX_EVENT_USD:
        raise ValueError(f"must be at most {MAX_EVENT_USD}")
    if decimal_places(amount) > 9:
        raise ValueError("at most 9 decimal places")
    return amount


# An amount of USD a caller gives: decimal text or a number, never negative, nano-exact.
UsdInput = Annotated[
    Decimal,
    BeforeValidator(parse_usd),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string"},
                {"type": "number", "minimum": 0, "maximum": int(MAX_EVENT_USD)},
            ],
            "description": f"USD as decimal text (or a number), 0 to {MAX_EVENT_USD}, at "
            "most 9 decimal places",
        }
    ),
]
