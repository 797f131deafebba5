"""Amounts as text: the integer rendering equals Decimal's exact value, digit for digit."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenledger.money import format_credits, format_usd

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def decimal_text(units: int, places: int, min_places: int) -> str:
    """The independent rendering: Decimal's exact value, trailing zeros trimmed."""
    text = f"{Decimal(units).scaleb(-places):f}"
    whole, _, fraction = text.partition(".")
    return f"{whole}.{fraction.rstrip('0').ljust(min_places, '0')}"


@given(INT64)
def test_usd_text_is_the_exact_decimal(nano: int) -> None:
    assert format_usd(nano) == decimal_text(nano, 9, 2)


@given(INT64)
def test_credit_text_is_the_exact_decimal(micro: int) -> None:
    assert format_credits(micro) == decimal_text(micro, 6, 1)


@pytest.mark.parametrize(
    ("nano", "text"),
    [
        (0, "0.00"),
        (1, "0.000000001"),
        (-1, "-0.000000001"),
        (1_500_000_000, "1.50"),
        (-2_000_000_000, "-2.00"),
        (123_456_789_012, "123.456789012"),
        (10_000_000, "0.01"),
    ],
)
def test_usd_text_by_hand(nano: int, text: str) -> None:
    assert format_usd(nano) == text


@pytest.mark.parametrize(
    ("micro", "text"), [(0, "0.0"), (1, "0.000001"), (2_500_000, "2.5"), (-7_000_000, "-7.0")]
)
def test_credit_text_by_hand(micro: int, text: str) -> None:
    assert format_credits(micro) == text


def test_no_amount_is_no_text() -> None:
    assert format_usd(None) is None
    assert format_credits(None) is None
