"""Exact money and credits: integer units, parsing and the one rounding rule.

USD amounts are stored as integer nano-dollars (1 USD = 10**9 nano). LLM token prices go
below a micro-dollar per token, and int64 nano-dollars still hold about 9.2 billion USD.
Credits are stored as integer micro-credits (1 credit = 10**6 micro). Amounts that do not
divide exactly (cost / cost per credit, a price times tokens) are rounded once, half to
even, and the rounded integer is what is stored; every sum is then a sum of integers.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

NANO_PER_USD = 10**9
MICRO_PER_CREDIT = 10**6

_USD_QUANTUM = Decimal(1) / NANO_PER_USD
_CREDIT_QUANTUM = Decimal(1) / MICRO_PER_CREDIT


class MoneyError(ValueError):
    """A value that cannot be an amount of money or credits."""


def to_decimal(value: object) -> Decimal:
    """Parse an amount from JSON-ish input: decimal text, int or Decimal; never a float."""
    if isinstance(value, bool) or value is None:
        raise MoneyError("must be a number")
    if isinstance(value, float):
        # A binary float has already lost the amount the caller meant; callers send text.
        value = repr(value)
    if isinstance(value, int | Decimal):
        amount = Decimal(value)
    elif isinstance(value, str):
        try:
            amount = Decimal(value.strip())
        except InvalidOperation as exc:
            raise MoneyError("must be a decimal number") from exc
    else:
        raise MoneyError("must be a number")
    if not amount.is_finite():
        raise MoneyError("must be finite")
    return amount


def decimal_places(amount: Decimal) -> int:
    """How many decimal places a finite amount needs (trailing zeros do not count).

    Read from the digits themselves: Decimal.normalize() and arithmetic round to the
    context's exponent range, and "1e-999999999" would become 0 there.
    """
    _sign, digits, exponent = amount.as_tuple()
    assert isinstance(exponent, int)
    if not any(digits):
        return 0
    trailing = len(digits) - len(bytes(digits).rstrip(b"\0"))
    return max(0, -(exponent + trailing))


def usd_to_nano(amount: Decimal) -> int:
    """Whole nano-dollars of an amount of USD, rounded half to even."""
    return int((amount * NANO_PER_USD).to_integral_value(ROUND_HALF_EVEN))


def nano_to_usd(nano: int) -> Decimal:
    """Exact USD value of an integer of nano-dollars."""
    return (Decimal(nano) / NANO_PER_USD).quantize(_USD_QUANTUM)


def credits_to_micro(amount: Decimal) -> int:
    """Whole micro-credits of an amount of credits, rounded half to even."""
    return int((amount * MICRO_PER_CREDIT).to_integral_value(ROUND_HALF_EVEN))


def micro_to_credits(micro: int) -> Decimal:
    """Exact credit value of an integer of micro-credits."""
    return (Decimal(micro) / MICRO_PER_CREDIT).quantize(_CREDIT_QUANTUM)


def credits_for_cost(cost_nano: int, cost_per_credit_nano: int) -> int:
    """Micro-credits that a cost consumes at a price per credit: the one division rule.

    credits = cost / cost_per_credit, rounded half to even to a micro-credit, in integers
    only: micro = cost_nano * 10**6 / cost_per_credit_nano.
    """
    if cost_per_credit_nano <= 0:
        raise MoneyError("cost per credit must be positive")
    return divide_half_even(cost_nano * MICRO_PER_CREDIT, cost_per_credit_nano)


def credits_value_nano(micro: int, cost_per_credit_nano: int) -> int:
    """USD value of micro-credits at a price per credit, in nano-dollars: the one rule.

    value = credits * cost_per_credit, rounded DOWN (toward minus infinity) to a nano-dollar,
    so that what credits are said to be worth, or to leave to spend, is never more than
    they buy: nano = micro * cost_per_credit_nano // 10**6.
    """
    return micro * cost_per_credit_nano // MICRO_PER_CREDIT


def divide_half_even(numerator: int, denominator: int) -> int:
    """numerator / denominator (denominator > 0), rounded half to even, in integers only."""
    quotient, remainder = divmod(numerator, denominator)
    twice = 2 * remainder
    if twice > denominator or (twice == denominator and quotient % 2 == 1):
        quotient += 1
    return quotient


def format_usd(nano: int | None) -> str | None:
    """Exact decimal text of nano-dollars with trailing zeros trimmed to at least 2 places."""
    if nano is None:
        return None
    return _fixed_text(nano, 9, 2)


def format_credits(micro: int | None) -> str | None:
    """Exact decimal text of micro-credits, trimmed to at least 1 place."""
    if micro is None:
        return None
    return _fixed_text(micro, 6, 1)


def decimal_text(units: int, places: int) -> str:
    """Exact decimal text of an integer of 10**-places units, every place shown
    (7692, 4 -> "0.7692")."""
    return _fixed_text(units, places, places)


def _fixed_text(units: int, places: int, min_places: int) -> str:
    """An integer of 10**-places units as decimal text, by slicing its digits (every
    answer renders a dozen amounts per organization: this is on the hot path)."""
    if not units:
        return "0." + "0" * min_places
    digits = str(units)
    sign = ""
    if units < 0:
        sign, digits = "-", digits[1:]
    if len(digits) <= places:
        digits = digits.rjust(places + 1, "0")
    fraction = digits[-places:].rstrip("0")
    if len(fraction) < min_places:
        fraction = fraction.ljust(min_places, "0")
    return f"{sign}{digits[:-places]}.{fraction}"


def round_usd(nano: int | None, places: int = 2) -> float | None:
    """The origin's JSON rendering of USD (a number with 2 places), for display only."""
    if nano is None:
        return None
    return _rounded_number(nano, 9, places)


def round_credits(micro: int | None, places: int = 1) -> float | None:
    """The origin's JSON rendering of credits (1 place), for display only."""
    if micro is None:
        return None
    return _rounded_number(micro, 6, places)


def _rounded_number(units: int, unit_places: int, places: int) -> float:
    """An integer of 10**-unit_places units rounded half to even to `places`, as the
    nearest float, in integers only (the overview renders thousands of them)."""
    scale: int = 10**places
    quotient = divide_half_even(units, 10 ** (unit_places - places))
    # int / int is correctly rounded: the same float as that of the exact decimal (and a
    # negative amount that rounds to nothing is -0.0, as Decimal's -0.00 is).
    number = quotient / scale
    return -0.0 if number == 0 and units < 0 else number


def percent(part: int, whole: int, places: int = 1) -> float | None:
    """part / whole in percent, rounded for display; None when whole is not positive."""
    if whole <= 0:
        return None
    value = Decimal(part) * 100 / Decimal(whole)
    return float(value.quantize(Decimal(1).scaleb(-places), ROUND_HALF_EVEN))


# Bounds of what the API accepts. Each value fits int64 with room to spare, and a ledger of
# realistic size never nears the bound in any sum it keeps (INT64_MAX nano-USD is about
# $9.2 billion): an organization's all-time totals, a license's credits, a license's holds.
# The write path refuses (409 ledger_limit, stores nothing) what would still pass it
# (ledger.bounds.LedgerRoom, budgets.service.create_reservation).
INT64_MAX = 2**63 - 1
MAX_USD = Decimal(1_000_000_000)  # a budget
MAX_EVENT_USD = Decimal(1_000_000)  # one event's cost, given or priced; one hold
MAX_CREDITS = Decimal(1_000_000_000_000)  # credits_total, credits_used
# Credits of one event are its cost / cost_per_credit: at $0.0001 a credit, a $1M event is
# 10^10 credits (10^16 micro-credits), and a license's credits reach int64 only past
# $900 million of spend.
MIN_COST_PER_CREDIT = Decimal("0.0001")
MAX_COST_PER_CREDIT = Decimal(1_000_000)
