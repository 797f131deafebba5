"""The origin's rounded numbers (USD to 2 places, credits to 1): the integer rounding gives
the float of Decimal's half-to-even rounding of the exact amount, sign of zero included."""

from __future__ import annotations

import json
from decimal import ROUND_HALF_EVEN, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenledger.money import round_credits, round_usd

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def decimal_number(units: int, unit_places: int, places: int) -> float:
    """The independent rendering: Decimal's exact value, rounded half to even."""
    exact = Decimal(units).scaleb(-unit_places)
    return float(exact.quantize(Decimal(1).scaleb(-places), ROUND_HALF_EVEN))


@given(INT64)
def test_usd_number_is_the_rounded_decimal(nano: int) -> None:
    # As JSON: -0.0 and 0.0 are equal floats but different answers.
    assert json.dumps(round_usd(nano)) == json.dumps(decimal_number(nano, 9, 2))


@given(INT64)
def test_credit_number_is_the_rounded_decimal(micro: int) -> None:
    assert json.dumps(round_credits(micro)) == json.dumps(decimal_number(micro, 6, 1))


@pytest.mark.parametrize(
    ("nano", "number"),
    [
        (0, 0.0),
        (4_999_999, 0.0),
        (5_000_000, 0.0),  # 0.005: a tie, to the even 0.00
        (15_000_000, 0.02),  # 0.015: to the even 0.02
        (25_000_000, 0.02),  # 0.025: to the even 0.02
        (25_000_001, 0.03),
        (1_234_567_890, 1.23),
        (-15_000_000, -0.02),
        (-4_000_000, -0.0),
    ],
)
def test_usd_numbers_by_hand(nano: int, number: float) -> None:
    assert json.dumps(round_usd(nano)) == json.dumps(number)


def test_credit_numbers_by_hand() -> None:
    assert round_credits(50_000) == 0.0  # 0.05: a tie, to the even 0.0
    assert round_credits(150_000) == 0.2  # 0.15: to the even 0.2
    assert round_credits(1_000_000_000) == 1000.0
    assert round_usd(None) is None
    assert round_credits(None) is None
