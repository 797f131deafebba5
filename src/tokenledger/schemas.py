"""Schemas shared by every domain."""

from __future__ import annotations

import math
import re
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
)

from tokenledger.money import MAX_USD, MoneyError, to_decimal

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
    if amount > MAX_USD:
        raise ValueError(f"must be at most {MAX_USD}")
    if amount.normalize().as_tuple().exponent < -9:  # type: ignore[operator]
        raise ValueError("at most 9 decimal places")
    return amount


# An amount of USD a caller gives: decimal text or a number, never negative, nano-exact.
UsdInput = Annotated[Decimal, BeforeValidator(parse_usd)]
