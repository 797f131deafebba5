"""The pricing engine against hand-worked costs and against genai-prices' own calc_price.

Rates below are written per token in nano-USD: $X per million tokens is X * 1000 nano-USD
per token ($3/MTok = 3000 nano/token, $0.30/MTok = 300 nano/token).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext

import genai_prices
import pytest
from genai_prices import Usage, calc_price
from genai_prices.data import providers as library_providers
from hypothesis import given
from hypothesis import strategies as st

from tokenledger.money import usd_to_nano
from tokenledger.pricing.engine import (
    PriceBook,
    PriceOverride,
    PriceQuote,
    Rates,
    TokenUsage,
    UsageError,
    default_price_book,
    library_usage_values,
)

AT = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return PriceBook()


def converted(usage: TokenUsage) -> Usage:
    """genai-prices' meaning, written out here independently of the engine's helper."""
    writes = usage.cache_creation_input_tokens
    return Usage(
        input_tokens=usage.input_tokens + usage.cache_read_input_tokens + writes,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_input_tokens,
        cache_write_tokens=writes,
        cache_write_5m_tokens=writes - usage.cache_write_1h_tokens,
        cache_write_1h_tokens=usage.cache_write_1h_tokens,
    )


def library_nano(provider: str, model: str, usage: TokenUsage, at: datetime) -> int:
    result = calc_price(converted(usage), model, provider_id=provider, genai_request_timestamp=at)
    return usd_to_nano(result.total_price)


def priced(
    book: PriceBook, provider: str, model: str, usage: TokenUsage, at: datetime
) -> PriceQuote:
    quote = book.quote(provider, model, usage, at)
    assert quote is not None, (provider, model)
    return quote


def usage(
    input_tokens: int = 0,
    output_tokens: int = 0,
    write_5m: int = 0,
    write_1h: int = 0,
    cache_read: int = 0,
) -> TokenUsage:
    return TokenUsage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_creation_input_tokens=write_5m + write_1h,
        cache_read_input_tokens=cache_read,
        cache_write_1h_tokens=write_1h,
    )


# Anthropic's published USD/MTok rates: input, output, 5m write, 1h write, cache read.
SONNET_4_5 = {
    "input": "3",
    "output": "15",
    "cache_write_5m": "3.75",
    "cache_write_1h": "6",
    "cache_read": "0.3",
}
SONNET_4_5_OVER_200K = {
    "input": "6",
    "output": "22.5",
    "cache_write_5m": "7.5",
    "cache_write_1h": "12",
    "cache_read": "0.6",
    "tier": "prompt_tokens>200000",
}
OPUS_4_1 = {
    "input": "15",
    "output": "75",
    "cache_write_5m": "18.75",
    "cache_write_1h": "30",
    "cache_read": "1.5",
}
HAIKU_4_5 = {
    "input": "1",
    "output": "5",
    "cache_write_5m": "1.25",
    "cache_write_1h": "2",
    "cache_read": "0.1",
}
HAIKU_3_5 = {
    "input": "0.8",
    "output": "4",
    "cache_write_5m": "1",
    "cache_write_1h": "1.6",
    "cache_read": "0.08",
}
SONNET_4 = SONNET_4_5  # same base rates; genai-prices 0.2.3 has no long-context tier for it


@pytest.mark.parametrize(
    ("model", "tokens", "expected_nano", "rates"),
    [
        # 1000*3000 + 500*15000 + 1500*3750 + 500*6000 + 10000*300
        # = 3_000_000 + 7_500_000 + 5_625_000 + 3_000_000 + 3_000_000
        ("claude-sonnet-4-5", usage(1000, 500, 1500, 500, 10000), 22_125_000, SONNET_4_5),
        # same, dated id
        ("claude-sonnet-4-5-20250929", usage(1000, 500, 1500, 500, 10000), 22_125_000, SONNET_4_5),
        # 2000*15000 + 1000*75000 + 4000*30000 = 30_000_000 + 75_000_000 + 120_000_000
        ("claude-opus-4-1", usage(2000, 1000, 0, 4000, 0), 225_000_000, OPUS_4_1),
        # one of each: 15000 + 75000 + 18750 + 30000 + 1500
        ("claude-opus-4-1-20250805", usage(1, 1, 1, 1, 1), 140_250, OPUS_4_1),
        # 12345*1000 + 678*5000 + 8000*1250 + 1000*2000 + 50000*100
        # = 12_345_000 + 3_390_000 + 10_000_000 + 2_000_000 + 5_000_000
        ("claude-haiku-4-5", usage(12345, 678, 8000, 1000, 50000), 32_735_000, HAIKU_4_5),
        # 100*800 + 100*4000 + 50*1000 + 50*1600 + 100*80
        # = 80_000 + 400_000 + 50_000 + 80_000 + 8_000
        ("claude-3-5-haiku-latest", usage(100, 100, 50, 50, 100), 618_000, HAIKU_3_5),
        ("claude-3-5-haiku-20241022", usage(100, 100, 50, 50, 100), 618_000, HAIKU_3_5),
        ("claude-sonnet-4-5", usage(), 0, SONNET_4_5),
        # Long context: the prompt is input + cache reads + cache writes.
        # Exactly 200_000 (150_000 + 6_000 + 4_000 + 40_000): base rates.
        # 150000*3000 + 1000*15000 + 6000*3750 + 4000*6000 + 40000*300
        # = 450_000_000 + 15_000_000 + 22_500_000 + 24_000_000 + 12_000_000
        ("claude-sonnet-4-5", usage(150_000, 1000, 6000, 4000, 40_000), 523_500_000, SONNET_4_5),
        # 200_001: the higher rates for ALL tokens, output included.
        # 150001*6000 + 1000*22500 + 6000*7500 + 4000*12000 + 40000*600
        # = 900_006_000 + 22_500_000 + 45_000_000 + 48_000_000 + 24_000_000
        (
            "claude-sonnet-4-5",
            usage(150_001, 1000, 6000, 4000, 40_000),
            1_039_506_000,
            SONNET_4_5_OVER_200K,
        ),
        # Cache reads count toward the threshold: 1 input + 199_999 reads = 200_000, base:
        # 1*3000 + 199999*300 = 3_000 + 59_999_700
        ("claude-sonnet-4-5", usage(1, 0, 0, 0, 199_999), 60_002_700, SONNET_4_5),
        # 1 input + 200_000 reads = 200_001, tier: 1*6000 + 200000*600
        ("claude-sonnet-4-5", usage(1, 0, 0, 0, 200_000), 120_006_000, SONNET_4_5_OVER_200K),
        # Cache writes count too: 200_000 5m writes + 1 1h write, nothing else: 200000*7500 + 12000
        ("claude-sonnet-4-5", usage(0, 0, 200_000, 1, 0), 1_500_012_000, SONNET_4_5_OVER_200K),
        # Sonnet 4 has no tier in this data: 250_000 input at $3 = 750_000_000
        ("claude-sonnet-4-20250514", usage(250_000), 750_000_000, SONNET_4),
    ],
)
def test_costs_worked_out_by_hand(
    book: PriceBook, model: str, tokens: TokenUsage, expected_nano: int, rates: dict[str, str]
) -> None:
    quote = priced(book, "anthropic", model, tokens, AT)
    assert quote.cost_nano == expected_nano
    assert quote.rates == rates
    assert quote.source == "genai-prices"
    assert quote.version == "genai-prices 0.2.3" == f"genai-prices {genai_prices.__version__}"
    assert quote.provider == "anthropic"


@pytest.mark.parametrize(
    ("provider", "model", "canonical"),
    [
        ("anthropic", "claude-sonnet-4-5", "claude-sonnet-4-5"),
        ("anthropic", "claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("anthropic", "claude-3-5-haiku-latest", "claude-3-5-haiku-latest"),
        ("Anthropic", "Claude-3-5-Haiku-20241022", "claude-3-5-haiku-latest"),
        ("anthropic", "claude-sonnet-4-20250514", "claude-sonnet-4-0"),
        ("anthropic", "claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("openai", "gpt-4o", "gpt-4o"),
        ("openai", "gpt-4o-2024-08-06", "gpt-4o"),
    ],
)
def test_model_names_resolve_like_the_library(
    book: PriceBook, provider: str, model: str, canonical: str
) -> None:
    quote = priced(book, provider, model, usage(10), AT)
    assert quote.priced_model == canonical
    assert book.known(provider, model, AT)


def test_openai_without_cache_write_price_prices_writes_as_input(book: PriceBook) -> None:
    # gpt-4o: $2.50 in, $10 out, $1.25 cached read, no cache-write price.
    # 1000*2500 + 1000*1250 + 100*10000 + 10*2500 = 2_500_000 + 1_250_000 + 1_000_000 + 25_000
    quote = priced(book, "openai", "gpt-4o", usage(1000, 100, 10, 0, 1000), AT)
    assert quote.cost_nano == 4_775_000
    assert quote.provider == "openai"
    assert quote.rates == {
        "input": "2.5",
        "output": "10",
        "cache_write_5m": "2.5",
        "cache_write_1h": "2.5",
        "cache_read": "1.25",
    }


def test_one_hour_write_falls_back_to_the_write_rate_where_the_data_has_none(
    book: PriceBook,
) -> None:
    # Claude Opus 4.6 on Google Vertex before 2026-03-13: $6.25 writes, no 1h price.
    before = datetime(2026, 3, 1, tzinfo=UTC)
    quote = priced(book, "google-vertex", "claude-opus-4-6", usage(0, 0, 0, 1000, 0), before)
    assert quote.provider == "google"
    assert quote.rates["cache_write_1h"] == "6.25"
    assert quote.cost_nano == 1000 * 6250
    after = datetime(2026, 3, 13, tzinfo=UTC)
    quote = priced(book, "google-vertex", "claude-opus-4-6", usage(0, 0, 0, 1000, 0), after)
    assert quote.rates["cache_write_1h"] == "10"
    assert quote.cost_nano == 1000 * 10000


def test_rounded_half_to_even(book: PriceBook) -> None:
    # deepseek-v4-pro in standard hours before 2026-08-17: cache reads at $0.003625/MTok,
    # that is 3.625 nano-USD per token.
    at = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    quote = priced(book, "deepseek", "deepseek-v4-pro", usage(cache_read=2), at)
    assert quote.rates["cache_read"] == "0.003625"
    assert quote.cost_nano == 7  # 7.25
    assert (
        priced(book, "deepseek", "deepseek-v4-pro", usage(cache_read=4), at).cost_nano == 14
    )  # 14.5
    assert (
        priced(book, "deepseek", "deepseek-v4-pro", usage(cache_read=12), at).cost_nano == 44
    )  # 43.5
    assert (
        priced(book, "deepseek", "deepseek-v4-pro", usage(cache_read=1), at).cost_nano == 4
    )  # 3.625


def test_conversion_to_the_library_meaning_matters(book: PriceBook) -> None:
    tokens = usage(100_000, 1000, 3000, 2000, 10_000)
    quote = priced(book, "anthropic", "claude-sonnet-4-5", tokens, AT)
    # Handing Anthropic's numbers over unchanged under-prices (the prompt looks smaller).
    naive = Usage(
        input_tokens=tokens.input_tokens,
        output_tokens=tokens.output_tokens,
        cache_read_tokens=tokens.cache_read_input_tokens,
        cache_write_tokens=tokens.cache_creation_input_tokens,
        cache_write_1h_tokens=tokens.cache_write_1h_tokens,
    )
    naive_nano = usd_to_nano(
        calc_price(
            naive, "claude-sonnet-4-5", provider_id="anthropic", genai_request_timestamp=AT
        ).total_price
    )
    assert (
        naive_nano < quote.cost_nano == library_nano("anthropic", "claude-sonnet-4-5", tokens, AT)
    )
    assert library_usage_values(tokens) == {
        "input_tokens": 115_000,
        "output_tokens": 1000,
        "cache_read_tokens": 10_000,
        "cache_write_tokens": 5000,
        "cache_write_5m_tokens": 3000,
        "cache_write_1h_tokens": 2000,
    }


# --- prices in force at the event's time ---------------------------------------------


def test_price_change_on_a_date(book: PriceBook) -> None:
    # OpenAI o3: $10 in / $40 out until 2025-06-09, $2 / $8 from 2025-06-10 (UTC dates).
    tokens = usage(1000, 1000)
    old = 1000 * 10_000 + 1000 * 40_000
    new = 1000 * 2_000 + 1000 * 8_000
    cases = [
        (datetime(2025, 6, 9, 23, 59, 59, tzinfo=UTC), old),
        (datetime(2025, 6, 10, 0, 0, tzinfo=UTC), new),
        # 01:00 at +02:00 is still June 9th in UTC
        (datetime(2025, 6, 10, 1, 0, tzinfo=timezone(timedelta(hours=2))), old),
        # 22:30 at -02:00 is already June 10th in UTC
        (datetime(2025, 6, 9, 22, 30, tzinfo=timezone(timedelta(hours=-2))), new),
        (datetime(2024, 1, 1, tzinfo=UTC), old),
        (datetime(2027, 1, 1, tzinfo=UTC), new),
        (datetime(2025, 6, 9, 12, 0, tzinfo=UTC), old),  # back to an earlier period
    ]
    for at, expected in cases:
        quote = priced(book, "openai", "o3", tokens, at)
        assert quote.cost_nano == expected == library_nano("openai", "o3", tokens, at), at
    assert priced(book, "openai", "o3", tokens, cases[0][0]).rates["input"] == "10"
    assert priced(book, "openai", "o3", tokens, cases[1][0]).rates["input"] == "2"


def test_long_context_tier_removed_on_a_date(book: PriceBook) -> None:
    # Claude Sonnet 4.6 lost its >200k tier on 2026-03-13.
    tokens = usage(300_000)
    before = priced(
        book, "anthropic", "claude-sonnet-4-6", tokens, datetime(2026, 3, 12, 23, 59, tzinfo=UTC)
    )
    after = priced(
        book, "anthropic", "claude-sonnet-4-6", tokens, datetime(2026, 3, 13, tzinfo=UTC)
    )
    assert before.cost_nano == 300_000 * 6000
    assert before.rates["tier"] == "prompt_tokens>200000"
    assert after.cost_nano == 300_000 * 3000
    assert "tier" not in after.rates


def test_price_by_time_of_day(book: PriceBook) -> None:
    # deepseek-chat: $0.27 in from 00:30 to 16:30 UTC, $0.135 off-peak.
    tokens = usage(1_000_000)
    peak, off_peak = 270_000_000, 135_000_000
    day = datetime(2026, 2, 2, tzinfo=UTC)
    cases = [
        (day.replace(hour=0, minute=29, second=59), off_peak),
        (day.replace(hour=0, minute=30), peak),
        (day.replace(hour=16, minute=29, second=59), peak),
        (day.replace(hour=16, minute=30), off_peak),
        (day.replace(hour=23), off_peak),
        # 18:00 at +05:00 is 13:00 UTC
        (datetime(2026, 2, 2, 18, 0, tzinfo=timezone(timedelta(hours=5))), peak),
    ]
    for at, expected in cases:
        quote = priced(book, "deepseek", "deepseek-chat", tokens, at)
        assert (
            quote.cost_nano == expected == library_nano("deepseek", "deepseek-chat", tokens, at)
        ), at


def test_naive_timestamps_are_refused(book: PriceBook) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        book.quote("anthropic", "claude-sonnet-4-5", usage(1), datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        book.known("anthropic", "claude-sonnet-4-5", datetime(2026, 1, 1))


# --- unknown models and overrides ----------------------------------------------------


def test_unknown_model_or_provider_is_unpriced(book: PriceBook) -> None:
    for provider, model in [
        ("anthropic", "claude-imaginary-9"),
        ("anthropic", "gpt-4o"),  # a model of another provider
        ("no-such-provider", "claude-sonnet-4-5"),
        ("anthropic", ""),
    ]:
        for _ in range(2):  # the second lookup comes from the negative cache
            assert book.quote(provider, model, usage(1000, 1000), AT) is None
            assert not book.known(provider, model, AT)


def test_overrides_win_and_match_exactly() -> None:
    override = PriceOverride(
        provider="Anthropic",
        model="Claude-Sonnet-4-5",
        rates=Rates(
            input=Decimal("2"),
            output=Decimal("10"),
            cache_write_5m=Decimal("2.5"),
            cache_write_1h=Decimal("4"),
            cache_read=Decimal("0.2"),
        ),
        version="override:2026-11-28T10:00:00Z",
    )
    book = PriceBook([override])
    tokens = usage(1000, 500, 1500, 500, 10_000)
    quote = priced(book, "anthropic", "claude-sonnet-4-5", tokens, AT)
    # 1000*2000 + 500*10000 + 1500*2500 + 500*4000 + 10000*200
    assert quote.cost_nano == 2_000_000 + 5_000_000 + 3_750_000 + 2_000_000 + 2_000_000
    assert quote.source == "override"
    assert quote.version == "override:2026-11-28T10:00:00Z"
    assert (quote.provider, quote.priced_model) == ("anthropic", "claude-sonnet-4-5")
    assert quote.rates == {
        "input": "2",
        "output": "10",
        "cache_write_5m": "2.5",
        "cache_write_1h": "4",
        "cache_read": "0.2",
    }
    assert priced(book, "ANTHROPIC", "claude-SONNET-4-5", tokens, AT).source == "override"
    # exact match only: the dated id is still priced by the library
    dated = priced(book, "anthropic", "claude-sonnet-4-5-20250929", tokens, AT)
    assert (dated.source, dated.cost_nano) == ("genai-prices", 22_125_000)


def test_override_prices_an_unknown_model_with_fallback_rates() -> None:
    override = PriceOverride(
        provider="acme",
        model="house-model-1",
        rates=Rates(input=Decimal("1"), output=Decimal("2"), cache_write_5m=Decimal("1.5")),
        version="override:v1",
    )
    book = PriceBook([override])
    assert PriceBook().quote("acme", "house-model-1", usage(1), AT) is None
    assert book.known("acme", "house-model-1", AT)
    quote = priced(book, "acme", "house-model-1", usage(1000, 1000, 1000, 1000, 1000), AT)
    # 1h writes at the 5m rate, reads at the input rate:
    # 1000*1000 + 1000*2000 + 1000*1500 + 1000*1500 + 1000*1000
    assert quote.cost_nano == 7_000_000
    assert quote.rates["cache_write_1h"] == "1.5"
    assert quote.rates["cache_read"] == "1"


def test_override_rounds_once_half_to_even() -> None:
    # $0.0000015/MTok is 0.0015 nano-USD per token
    rates = Rates(input=Decimal("0.0000015"), output=Decimal("0"))
    book = PriceBook([PriceOverride("acme", "tiny", rates, "override:v1")])
    assert priced(book, "acme", "tiny", usage(1000), AT).cost_nano == 2  # 1.5
    assert priced(book, "acme", "tiny", usage(3000), AT).cost_nano == 4  # 4.5
    assert priced(book, "acme", "tiny", usage(3001), AT).cost_nano == 5  # 4.5015
    # once for the whole call, not per kind of token: 1.5 + 1.5 = 3 (rounding each: 2 + 2)
    both = Rates(input=Decimal("0.0000015"), output=Decimal("0.0000015"))
    book = PriceBook([PriceOverride("acme", "tiny", both, "override:v2")])
    assert priced(book, "acme", "tiny", usage(1000, 1000), AT).cost_nano == 3


RATE = st.decimals(min_value=0, max_value=1000, places=9, allow_nan=False, allow_infinity=False)
COUNT = st.integers(min_value=0, max_value=10**12)


@given(
    rates=st.tuples(RATE, RATE, RATE, RATE, RATE),
    counts=st.tuples(COUNT, COUNT, COUNT, COUNT, COUNT),
)
def test_any_override_costs_its_exact_sum_rounded_once(
    rates: tuple[Decimal, ...], counts: tuple[int, ...]
) -> None:
    """Any rates with up to 9 places, any counts: the cost is the exact Decimal sum,
    rounded once half to even to a nano-dollar (worked out here, not by the engine)."""
    names = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")
    book = PriceBook(
        [PriceOverride("acme", "any", Rates(**dict(zip(names, rates, strict=True))), "v")]
    )
    plain, output, write_5m, write_1h, read = counts
    tokens = TokenUsage(
        input_tokens=plain,
        output_tokens=output,
        cache_creation_input_tokens=write_5m + write_1h,
        cache_read_input_tokens=read,
        cache_write_1h_tokens=write_1h,
    )
    with localcontext(Context(prec=100)):
        exact = sum(
            (rate * count for rate, count in zip(rates, counts, strict=True)), Decimal(0)
        ) / Decimal(10**6)
        expected = int((exact * 10**9).to_integral_value(ROUND_HALF_EVEN))
    assert priced(book, "acme", "any", tokens, AT).cost_nano == expected


def test_invalid_rates_and_usage_are_refused() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        Rates(input=Decimal("-1"), output=Decimal("1"))
    with pytest.raises(ValueError, match="non-negative"):
        Rates(input=Decimal("NaN"), output=Decimal("1"))
    with pytest.raises(TypeError):
        Rates(input=1.5, output=Decimal("1"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="between"):
        TokenUsage(input_tokens=-1)
    with pytest.raises(TypeError):
        TokenUsage(output_tokens=True)
    with pytest.raises(TypeError):
        TokenUsage(output_tokens=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot exceed"):
        TokenUsage(cache_creation_input_tokens=10, cache_write_1h_tokens=11)


# --- equality with genai-prices' calc_price ------------------------------------------

GRID_MODELS = [
    ("anthropic", "claude-sonnet-4-5"),
    ("anthropic", "claude-sonnet-4-6"),
    ("anthropic", "claude-opus-4-6"),
    ("anthropic", "claude-opus-4-1"),
    ("anthropic", "claude-haiku-4-5"),
    ("anthropic", "claude-haiku-5-5"),
    ("anthropic", "claude-3-5-haiku-latest"),
    ("anthropic", "claude-sonnet-4-20250514"),
    ("anthropic", "claude-opus-4-8"),
    ("google", "claude-opus-4-6"),
    ("google", "gemini-1.5-pro"),
    ("openai", "gpt-4o"),
    ("openai", "o3"),
    ("openai", "gpt-5.6-sol"),
    ("deepseek", "deepseek-chat"),
    ("deepseek", "deepseek-v4-pro"),
    ("deepseek", "deepseek-v4-flash"),
    ("perplexity", "sonar"),  # has a per-request price
    ("openrouter", "qwen/qwen3-coder-flash"),  # two tiers
]
GRID_DATES = [
    datetime(2025, 1, 1, tzinfo=UTC),
    datetime(2025, 6, 10, 0, 0, tzinfo=UTC),
    datetime(2026, 3, 12, 23, 59, 59, tzinfo=UTC),
    datetime(2026, 3, 13, 2, 0, tzinfo=UTC),
    datetime(2026, 8, 17, 7, 0, tzinfo=UTC),
    datetime(2026, 9, 10, 12, 0, tzinfo=timezone(timedelta(hours=5))),
    datetime(2027, 1, 1, 20, 0, tzinfo=UTC),
]


def grid_usages() -> Iterator[TokenUsage]:
    yield usage()
    yield usage(1, 1, 1, 1, 1)
    yield usage(0, 7, 0, 0, 0)
    yield usage(10**12, 3 * 10**11, 2 * 10**11, 10**11, 5 * 10**11)
    for threshold in (32_000, 100_000, 128_000, 200_000, 272_000):
        for prompt in (threshold - 1, threshold, threshold + 1):
            yield usage(prompt, 1234)  # all plain input
            third = prompt // 3
            # the same prompt made mostly of cache, with a 1h part
            yield usage(prompt - 3 * third, 99, third, third, third)
            yield usage(0, 0, 0, 0, prompt)  # all cache reads


@pytest.mark.parametrize(("provider", "model"), GRID_MODELS)
def test_equal_to_calc_price_over_a_grid(book: PriceBook, provider: str, model: str) -> None:
    for at in GRID_DATES:
        for tokens in grid_usages():
            quote = priced(book, provider, model, tokens, at)
            expected = library_nano(provider, model, tokens, at)
            assert quote.cost_nano == expected, (at, tokens)


def test_equal_to_calc_price_for_every_model_in_the_data(book: PriceBook) -> None:
    # 123_457 + 36_543 + 40_001 = 200_001 prompt tokens: just over the usual threshold.
    over = usage(123_457, 98_765, 39_998, 3, 36_543)
    small = usage(900, 50, 20, 10, 300)
    at = datetime(2026, 9, 1, 3, 0, tzinfo=UTC)
    priced_count = 0
    for provider in library_providers:
        for model in provider.models:
            for tokens in (over, small):
                try:
                    result = calc_price(
                        converted(tokens),
                        model.id,
                        provider_id=provider.id,
                        genai_request_timestamp=at,
                    )
                except LookupError:  # some ids do not match their own model; the engine agrees
                    assert book.quote(provider.id, model.id, tokens, at) is None
                    continue
                quote = priced(book, provider.id, model.id, tokens, at)
                assert quote.cost_nano == usd_to_nano(result.total_price), (provider.id, model.id)
                assert (quote.provider, quote.priced_model) == (result.provider.id, result.model.id)
                priced_count += 1
    assert priced_count > 2000


# --- the hot path ----------------------------------------------------------------------


def test_periods_are_resolved_once(book: PriceBook) -> None:
    fresh = PriceBook()
    tokens = usage(1000, 1000)
    for day in range(1, 29):
        fresh.quote("openai", "o3", tokens, datetime(2025, 6, day, 8, tzinfo=UTC))
        fresh.quote("anthropic", "claude-sonnet-4-5", tokens, datetime(2026, 2, day, tzinfo=UTC))
    entry = fresh._models[("openai", "o3")]
    assert len(entry.by_period) == 2  # type: ignore[attr-defined]  # before and after June 10th
    entry = fresh._models[("anthropic", "claude-sonnet-4-5")]
    assert len(entry.by_period) == 1  # type: ignore[attr-defined]
    fresh.quote("anthropic", "claude-nope", tokens, AT)
    assert ("anthropic", "claude-nope") in fresh._models  # negative cache


def test_thread_pool_gives_the_same_answers() -> None:
    shared = PriceBook()
    jobs = [
        (provider, model, tokens, at)
        for provider, model in GRID_MODELS[:8]
        for at in GRID_DATES[:4]
        for tokens in (usage(10, 20, 30, 40, 50), usage(250_000, 1, 1, 1, 1))
    ]

    def run(job: tuple[str, str, TokenUsage, datetime]) -> int | None:
        quote = shared.quote(*job)
        return None if quote is None else quote.cost_nano

    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(run, jobs * 4))
    sequential = [run(job) for job in jobs] * 4
    assert parallel == sequential
    assert sequential == [library_nano(*job) for job in jobs] * 4


def test_default_price_book_is_shared() -> None:
    first = default_price_book()
    assert first is default_price_book()
    quote = first.quote("anthropic", "claude-sonnet-4-5", usage(1000), AT)
    assert quote is not None
    assert quote.source == "genai-prices"


# --- every billable unit ---------------------------------------------------------------


def full(tokens: TokenUsage, **units: int) -> TokenUsage:
    return TokenUsage(
        input_tokens=tokens.input_tokens,
        output_tokens=tokens.output_tokens,
        cache_creation_input_tokens=tokens.cache_creation_input_tokens,
        cache_read_input_tokens=tokens.cache_read_input_tokens,
        cache_write_1h_tokens=tokens.cache_write_1h_tokens,
        units=units,
    )


def library_usage(tokens: TokenUsage) -> Usage:
    values = {
        "input_tokens": tokens.prompt_tokens,
        "output_tokens": tokens.output_tokens,
        "cache_read_tokens": tokens.cache_read_input_tokens,
        "cache_write_tokens": tokens.cache_creation_input_tokens,
        "cache_write_5m_tokens": tokens.cache_creation_input_tokens - tokens.cache_write_1h_tokens,
        "cache_write_1h_tokens": tokens.cache_write_1h_tokens,
    }
    values.update(tokens.units)
    return Usage(**values)


def test_web_searches_are_priced_per_thousand(book: PriceBook) -> None:
    # claude-sonnet-4-5: $10 per 1000 searches, so 10_000_000 nano-USD a search.
    # 1000*3000 + 500*15000 + 2 * 10_000_000 = 3_000_000 + 7_500_000 + 20_000_000
    tokens = full(usage(1000, 500), web_searches=2)
    quote = priced(book, "anthropic", "claude-sonnet-4-5", tokens, AT)
    assert quote.cost_nano == 30_500_000
    assert quote.unpriced_units == ()
    assert quote.rates["web_searches_kcount"] == "10"
    # not listed when the call did not search
    assert (
        "web_searches_kcount"
        not in priced(book, "anthropic", "claude-sonnet-4-5", usage(1), AT).rates
    )


def test_a_unit_without_a_rate_is_named_and_left_out(book: PriceBook) -> None:
    # claude-sonnet-4-5 has no code-execution price in this data: the tokens are priced,
    # the executions are named as unpriced.
    tokens = full(usage(1000, 500), code_executions=3, web_searches=1)
    quote = priced(book, "anthropic", "claude-sonnet-4-5", tokens, AT)
    assert quote.unpriced_units == ("code_executions",)
    assert quote.cost_nano == 3_000_000 + 7_500_000 + 10_000_000
    # an override prices only what its rates name
    override = PriceOverride(
        "acme", "house", Rates(input=Decimal("1"), output=Decimal("2")), "override:v1"
    )
    quote = priced(PriceBook([override]), "acme", "house", tokens, AT)
    assert quote.unpriced_units == ("code_executions", "web_searches")
    assert quote.cost_nano == 1000 * 1000 + 500 * 2000
    with_searches = Rates(
        input=Decimal("1"), output=Decimal("2"), units={"web_searches_kcount": Decimal("25")}
    )
    book2 = PriceBook([PriceOverride("acme", "house", with_searches, "override:v2")])
    quote = priced(book2, "acme", "house", tokens, AT)
    assert quote.unpriced_units == ("code_executions",)
    assert quote.cost_nano == 1000 * 1000 + 500 * 2000 + 25_000_000


def test_batch_and_priority_tiers(book: PriceBook) -> None:
    at = datetime(2026, 11, 1, tzinfo=UTC)
    tokens = usage(1000, 1000, 0, 0, 1000)
    # claude-sonnet-4-5 batch: $1.50 in, $7.50 out, $0.15 cache read
    batch = priced(book, "anthropic", "claude-sonnet-4-5", tokens, at)
    quote = book.quote("anthropic", "claude-sonnet-4-5", tokens, at, {"processing": "batch"})
    assert quote is not None
    assert batch.cost_nano == 1000 * 3000 + 1000 * 15000 + 1000 * 300
    assert quote.cost_nano == 1000 * 1500 + 1000 * 7500 + 1000 * 150
    assert quote.rates["context"] == "processing=batch"
    # gpt-4o priority from 2026-10-12: $4.25 in, $17 out, $2.125 cached
    quote = book.quote("openai", "gpt-4o", tokens, at, {"service_tier": "priority"})
    assert quote is not None
    assert quote.cost_nano == 1000 * 4250 + 1000 * 17000 + 1000 * 2125
    # before the variant existed, the standard price
    quote = book.quote("openai", "gpt-4o", tokens, AT, {"service_tier": "priority"})
    assert quote is not None
    assert quote.cost_nano == 1000 * 2500 + 1000 * 10000 + 1000 * 1250


GRID_CONTEXTS: list[dict[str, str] | None] = [
    None,
    {"processing": "batch"},
    {"service_tier": "priority"},
    {"service_tier": "flex"},
    {"service_tier": "fast"},
    {"speed": "fast"},
    {"service_tier": "default"},
]


def grid_unit_usages() -> Iterator[TokenUsage]:
    small = usage(1000, 2000, 300, 200, 4000)
    long = usage(150_001, 10, 30_000, 20_000, 1)  # over the usual long-context threshold
    yield full(small, web_searches=3)
    yield full(long, web_searches=3, output_reasoning_tokens=5)
    yield full(small, output_reasoning_tokens=1500)
    yield full(long, input_audio_tokens=700, output_audio_tokens=10)
    yield full(small, input_audio_tokens=700, cache_audio_read_tokens=50)
    yield full(long, code_executions=2, storage_searches=4, social_searches=1)
    yield full(small, input_image_tokens=400, input_text_tokens=500)
    yield full(long, output_text_tokens=10, output_reasoning_tokens=5)


def unit_grid_models() -> list[tuple[str, str]]:
    """Every model of the data that prices a unit beyond the token categories or has variants."""
    found = []
    core = {"input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok"}
    core |= {"cache_write_1h_mtok", "cache_write_5m_mtok"}
    for provider in library_providers:
        for model in provider.models:
            prices = (
                [model.prices]
                if not isinstance(model.prices, list)
                else [conditional.prices for conditional in model.prices]
            )
            prices += [variant.prices for variant in model.price_variants or ()]
            keys = {k for price in prices for k, v in vars(price).items() if v is not None}
            if keys - core or model.price_variants:
                found.append((provider.id, model.id))
    return found


def test_equal_to_calc_price_for_every_unit_and_context(book: PriceBook) -> None:
    models = unit_grid_models()
    assert len(models) > 150
    dates = [datetime(2025, 6, 1, tzinfo=UTC), datetime(2026, 11, 20, 18, tzinfo=UTC)]
    compared = refused = 0
    # Price variants begin in October 2026: the contexts are tried at the later date only.
    cases = [(dates[0], None)] + [(dates[1], context) for context in GRID_CONTEXTS]
    for provider, model in models:
        for at, context in cases:
            for tokens in grid_unit_usages():
                try:
                    result = calc_price(
                        library_usage(tokens),
                        model,
                        provider_id=provider,
                        genai_request_timestamp=at,
                        price_context=context,
                    )
                except LookupError:
                    assert book.quote(provider, model, tokens, at, context) is None
                    continue
                except ValueError:
                    # contradictory for this price (e.g. a modality's cache reads
                    # needed explicitly): the engine refuses it too
                    with pytest.raises(UsageError):
                        book.quote(provider, model, tokens, at, context)
                    refused += 1
                    continue
                quote = book.quote(provider, model, tokens, at, context)
                assert quote is not None
                assert quote.cost_nano == usd_to_nano(result.total_price), (
                    provider,
                    model,
                    at,
                    context,
                    tokens,
                )
                compared += 1
    assert compared > 5_000
    assert refused < compared / 10
