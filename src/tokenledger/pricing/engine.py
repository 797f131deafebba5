"""The pricing engine: exact cost of one model call, with the price in force at its time.

Prices come from the pinned ``genai-prices`` package (its bundled data, never fetched and
never auto-updated here) or from operator overrides, which win.

Meaning of the token counts: ``TokenUsage`` carries the Anthropic Messages API meaning,
where ``input_tokens`` excludes cache reads and cache writes. genai-prices means the whole
prompt by ``input_tokens`` and counts 1-hour writes inside ``cache_write_tokens``; the
conversion is done once, in ``library_usage_values``.

How genai-prices prices a request, reproduced here exactly:

* every priced unit takes the tokens of its own kind that no more specific priced unit
  takes: a 1-hour cache write is priced at ``cache_write_1h_mtok`` if the model has it,
  else at ``cache_write_mtok``, else as plain input; a cache read at ``cache_read_mtok``,
  else as plain input;
* a long-context tier applies when the whole prompt (input + cache reads + cache writes)
  is strictly above the tier's start, and then to all tokens of the request;
* the price in force is chosen by the request's timestamp (date changes in UTC, and
  times of day for off-peak prices).

Hot path: the library's ``calc_price`` costs about 100 microseconds. Here a model reference
is resolved once per (provider, model) with the library's own matching, its price is
resolved once per price period (the span of time in which the library's choice of price
cannot change) and compiled into plain Decimal rates; a quote is then a dictionary lookup
and a few exact multiplications. Unknown models are cached too. The caches are plain
dictionaries whose writes are idempotent, which is safe from a thread pool.

Rounding: the cost is summed exactly and rounded once to a nano-dollar, half to even
(``money.usd_to_nano``).
"""

from __future__ import annotations

import threading
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import (
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    localcontext,
)
from typing import Final

from genai_prices import __version__ as _GENAI_PRICES_VERSION
from genai_prices.data_snapshot import DataSnapshot
from genai_prices.data_units import unit_data
from genai_prices.types import (
    ModelInfo,
    ModelPrice,
    Provider,
    StartDateConstraint,
    TieredPrices,
    TimeOfDateConstraint,
)
from genai_prices.units import UnitDef, UnitRegistry
from genai_prices.validation import validate_priced_units

from tokenledger.money import usd_to_nano

__all__ = [
    "LIBRARY_SOURCE",
    "LIBRARY_VERSION",
    "OVERRIDE_SOURCE",
    "PriceBook",
    "PriceOverride",
    "PriceQuote",
    "Rates",
    "TokenUsage",
    "default_price_book",
    "library_usage_values",
]

LIBRARY_SOURCE: Final = "genai-prices"
OVERRIDE_SOURCE: Final = "override"
# The bundled data is pinned by the package version; the library exposes no other identity
# for its bundled snapshot.
LIBRARY_VERSION: Final = f"genai-prices {_GENAI_PRICES_VERSION}"

# Token counts are stored as int64 in the database.
MAX_TOKENS: Final = 2**63 - 1

_MTOK: Final = Decimal(1_000_000)
_ZERO: Final = Decimal(0)
# Exact arithmetic: enough digits for any int64 count times any sane rate; anything that
# would still need rounding raises instead of being rounded silently.
_EXACT: Final = Context(
    prec=200,
    Emax=999_999,
    Emin=-999_999,
    traps=[Inexact, InvalidOperation, DivisionByZero, Overflow],
)
# Bound on cached model references: callers may send arbitrary model strings.
_CACHE_LIMIT: Final = 10_000

# Our categories of tokens (Anthropic meaning) and the library unit each one is reported as.
_CATEGORIES: Final = (
    ("input", "input_tokens"),
    ("output", "output_tokens"),
    ("cache_write_5m", "cache_write_5m_tokens"),
    ("cache_write_1h", "cache_write_1h_tokens"),
    ("cache_read", "cache_read_tokens"),
)


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Token counts with the Anthropic Messages API meaning."""

    input_tokens: int = 0  # excludes cache reads and writes (Anthropic meaning)
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0  # all cache writes, 5m and 1h together
    cache_read_input_tokens: int = 0
    # the part of cache_creation_input_tokens written with 1h TTL
    cache_write_1h_tokens: int = 0

    def __post_init__(self) -> None:
        for name in (
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
            "cache_write_1h_tokens",
        ):
            value = getattr(self, name)
            if type(value) is not int:
                raise TypeError(f"{name} must be an int")
            if not 0 <= value <= MAX_TOKENS:
                raise ValueError(f"{name} must be between 0 and {MAX_TOKENS}")
        if self.cache_write_1h_tokens > self.cache_creation_input_tokens:
            raise ValueError("cache_write_1h_tokens cannot exceed cache_creation_input_tokens")

    @property
    def cache_write_5m_tokens(self) -> int:
        """Cache writes with the 5-minute TTL."""
        return self.cache_creation_input_tokens - self.cache_write_1h_tokens

    @property
    def prompt_tokens(self) -> int:
        """The whole prompt: input, cache reads and cache writes (what tiers count)."""
        return self.input_tokens + self.cache_read_input_tokens + self.cache_creation_input_tokens


def library_usage_values(usage: TokenUsage) -> dict[str, int]:
    """The same usage in genai-prices' meaning, as keyword arguments for ``genai_prices.Usage``.

    ``input_tokens`` is the whole prompt; ``cache_write_tokens`` holds all writes, of which
    ``cache_write_5m_tokens`` and ``cache_write_1h_tokens`` are the two parts.
    """
    return {
        "input_tokens": usage.prompt_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_input_tokens,
        "cache_write_tokens": usage.cache_creation_input_tokens,
        "cache_write_5m_tokens": usage.cache_write_5m_tokens,
        "cache_write_1h_tokens": usage.cache_write_1h_tokens,
    }


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per million tokens, exact decimals.

    A missing cache rate falls back the way genai-prices does for its own data: a cache
    read or a 5-minute write is priced as input, a 1-hour write as a 5-minute write if that
    is set, else as input.
    """

    input: Decimal
    output: Decimal
    cache_write_5m: Decimal | None = None
    cache_write_1h: Decimal | None = None
    cache_read: Decimal | None = None

    def __post_init__(self) -> None:
        for name in ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read"):
            value = getattr(self, name)
            if value is None and name not in ("input", "output"):
                continue
            if not isinstance(value, Decimal):
                raise TypeError(f"rate {name} must be a Decimal")
            if not value.is_finite() or value < 0:
                raise ValueError(f"rate {name} must be a finite, non-negative decimal")


@dataclass(frozen=True, slots=True)
class PriceOverride:
    provider: str
    model: str
    rates: Rates
    version: str  # e.g. "override:2026-11-28T10:00:00Z", stored with each event priced by it


@dataclass(frozen=True, slots=True)
class PriceQuote:
    cost_nano: int  # exact cost in integer nano-USD, rounded once, half to even
    source: str  # "genai-prices" or "override"
    version: str  # "genai-prices 0.2.3" or the override's version
    provider: str  # provider id as priced
    priced_model: str  # the library's canonical model id that matched (or the override's model)
    # Rates applied (after tier selection), USD/MTok as decimal text: input, output,
    # cache_write_5m, cache_write_1h, cache_read; "tier" when a long-context tier applied;
    # "requests_per_k" when the model also has a per-request price (USD per 1000 requests).
    rates: dict[str, str]


# --- compiled prices -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _RateSet:
    """Rates of one tier level, ready to apply."""

    input: Decimal
    output: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal
    cache_read: Decimal
    fixed_usd: Decimal  # per-request price of one request, in USD
    text: Mapping[str, str]

    def cost_nano(self, usage: TokenUsage) -> int:
        with localcontext(_EXACT):
            total = (
                self.input * usage.input_tokens
                + self.output * usage.output_tokens
                + self.cache_write_5m * usage.cache_write_5m_tokens
                + self.cache_write_1h * usage.cache_write_1h_tokens
                + self.cache_read * usage.cache_read_input_tokens
            ) / _MTOK + self.fixed_usd
            return usd_to_nano(total)


@dataclass(frozen=True, slots=True)
class _PriceTable:
    """A resolved price: rate sets by tier level (the number of tier starts below the prompt)."""

    starts: tuple[int, ...]
    levels: tuple[_RateSet, ...]

    def rate_set(self, usage: TokenUsage) -> _RateSet:
        if not self.starts:
            return self.levels[0]
        return self.levels[bisect_left(self.starts, usage.prompt_tokens)]


def _decimal_text(value: Decimal) -> str:
    return format(value, "f")


def _is_valid_rate(value: object) -> bool:
    return isinstance(value, Decimal) and value.is_finite() and value >= 0


def _valid_price(value: object) -> Decimal | TieredPrices | None:
    """The price if genai-prices would accept it, else None (it would raise ValueError)."""
    if isinstance(value, Decimal):
        return value if _is_valid_rate(value) else None
    if isinstance(value, TieredPrices):
        if not _is_valid_rate(value.base):
            return None
        previous = -1
        for tier in value.tiers:
            if (
                type(tier.start) is not int
                or tier.start < previous
                or not _is_valid_rate(tier.price)
            ):
                return None
            previous = tier.start
        return value
    return None


def _applicable(price: Decimal | TieredPrices | None, prompt_tokens: int) -> Decimal:
    """genai-prices' tier rule: the highest tier whose start the whole prompt exceeds."""
    if price is None:
        return _ZERO
    if isinstance(price, Decimal):
        return price
    applicable = price.base
    for tier in reversed(price.tiers):  # sorted by start when the library built them
        if prompt_tokens > tier.start:
            applicable = tier.price
            break
    return applicable


class _Units:
    """genai-prices' unit registry, built from its public unit data."""

    def __init__(self) -> None:
        self.registry = UnitRegistry(unit_data)
        self.categories: tuple[tuple[str, UnitDef], ...] = tuple(
            (name, self.registry.units[usage_key]) for name, usage_key in _CATEGORIES
        )
        self.requests: UnitDef = self.registry.units["requests"]

    def compile(self, model_price: ModelPrice) -> _PriceTable | None:
        """Compile a library price into rate sets; None when the library could not use it."""
        priced: list[tuple[UnitDef, Decimal | TieredPrices]] = []
        for price_key, raw in vars(model_price).items():
            if price_key.startswith("_") or raw is None:
                continue
            try:
                unit = self.registry.unit_for_price_key(price_key)
            except KeyError:
                continue  # genai-prices ignores (and warns about) keys it does not know
            price = _valid_price(raw)
            if price is None:
                return None
            priced.append((unit, price))
        try:
            validate_priced_units([unit for unit, _ in priced], self.registry)
        except ValueError:
            return None

        # Each category of tokens is priced by the most specific priced unit that contains it.
        category_prices: dict[str, Decimal | TieredPrices | None] = {}
        for name, category in self.categories:
            best: tuple[UnitDef, Decimal | TieredPrices] | None = None
            for unit, price in priced:
                contains = unit.dimensions.items() <= category.dimensions.items()
                if contains and (best is None or len(unit.dimensions) > len(best[0].dimensions)):
                    best = (unit, price)
            category_prices[name] = None if best is None else best[1]
        request_price = next(
            (price for unit, price in priced if unit.usage_key == self.requests.usage_key), None
        )

        tiered = [
            price
            for price in (*category_prices.values(), request_price)
            if isinstance(price, TieredPrices)
        ]
        starts = tuple(sorted({tier.start for price in tiered for tier in price.tiers}))
        levels: list[_RateSet] = []
        for level in range(len(starts) + 1):
            # A prompt size inside this level: above `level` starts, not above the rest.
            prompt = 0 if level == 0 else starts[level - 1] + 1
            rates = {name: _applicable(category_prices[name], prompt) for name, _ in _CATEGORIES}
            text = {name: _decimal_text(rate) for name, rate in rates.items()}
            fixed = _ZERO
            if request_price is not None:
                per_k = _applicable(request_price, prompt)
                text["requests_per_k"] = _decimal_text(per_k)
                with localcontext(_EXACT):
                    fixed = per_k / self.requests.per
            if level > 0:
                base = levels[0]
                if any(rates[name] != getattr(base, name) for name, _ in _CATEGORIES) or (
                    fixed != base.fixed_usd
                ):
                    text["tier"] = f"prompt_tokens>{starts[level - 1]}"
            levels.append(
                _RateSet(
                    input=rates["input"],
                    output=rates["output"],
                    cache_write_5m=rates["cache_write_5m"],
                    cache_write_1h=rates["cache_write_1h"],
                    cache_read=rates["cache_read"],
                    fixed_usd=fixed,
                    text=text,
                )
            )
        return _PriceTable(starts=starts, levels=tuple(levels))


def _utc_naive_time(value: time) -> time:
    """A constraint's time of day in UTC, without tzinfo (naive means UTC, as in genai-prices)."""
    if value.tzinfo is None:
        return value
    aware = datetime.combine(date(1970, 1, 1), value).astimezone(UTC)
    return aware.time()


class _ModelEntry:
    """A resolved (provider, model): its library objects and its compiled prices by period."""

    __slots__ = ("_dates", "_times", "by_period", "model", "provider")

    def __init__(self, provider: Provider, model: ModelInfo) -> None:
        self.provider = provider
        self.model = model
        dates: set[date] = set()
        times: set[time] = set()
        if not isinstance(model.prices, ModelPrice):
            for conditional in model.prices:
                constraint = conditional.constraint
                if isinstance(constraint, StartDateConstraint):
                    dates.add(constraint.start_date)
                elif isinstance(constraint, TimeOfDateConstraint):
                    times.add(_utc_naive_time(constraint.start_time))
                    times.add(_utc_naive_time(constraint.end_time))
        # Between two consecutive boundaries no constraint can change its answer, so the
        # library's choice of price is the same: that span is one price period.
        self._dates = tuple(sorted(dates))
        self._times = tuple(sorted(times))
        self.by_period: dict[tuple[int, int], _PriceTable | None] = {}

    def period(self, at: datetime) -> tuple[int, int]:
        if not self._dates and not self._times:
            return (0, 0)
        utc = at.astimezone(UTC)
        return (bisect_right(self._dates, utc.date()), bisect_right(self._times, utc.time()))


_UNKNOWN: Final = object()


def _require_aware(at: datetime) -> None:
    if not isinstance(at, datetime) or at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("at must be a timezone-aware datetime")


def _key(provider: str, model: str) -> tuple[str, str]:
    return (provider.strip().lower(), model.lower())


class _CompiledOverride:
    __slots__ = ("override", "rate_set")

    def __init__(self, override: PriceOverride) -> None:
        rates = override.rates
        cache_write_5m = rates.cache_write_5m if rates.cache_write_5m is not None else rates.input
        cache_write_1h = (
            rates.cache_write_1h if rates.cache_write_1h is not None else cache_write_5m
        )
        cache_read = rates.cache_read if rates.cache_read is not None else rates.input
        values = {
            "input": rates.input,
            "output": rates.output,
            "cache_write_5m": cache_write_5m,
            "cache_write_1h": cache_write_1h,
            "cache_read": cache_read,
        }
        self.override = override
        self.rate_set = _RateSet(
            input=rates.input,
            output=rates.output,
            cache_write_5m=cache_write_5m,
            cache_write_1h=cache_write_1h,
            cache_read=cache_read,
            fixed_usd=_ZERO,
            text={name: _decimal_text(value) for name, value in values.items()},
        )


class PriceBook:
    """Prices model calls: operator overrides first, then genai-prices' bundled data."""

    def __init__(self, overrides: Iterable[PriceOverride] = ()) -> None:
        from genai_prices.data import providers  # the bundled data: a large module, load late

        self._providers: list[Provider] = providers
        self._units = _Units()
        self._overrides: dict[tuple[str, str], _CompiledOverride] = {}
        for override in overrides:
            if not isinstance(override.rates, Rates):
                raise TypeError("override rates must be Rates")
            self._overrides[(override.provider.strip().lower(), override.model.lower())] = (
                _CompiledOverride(override)
            )
        self._models: dict[tuple[str, str], _ModelEntry | object] = {}

    def quote(
        self, provider: str, model: str, usage: TokenUsage, at: datetime
    ) -> PriceQuote | None:
        """The cost of one call, or None when nobody can price this model.

        None means an unknown model or provider: the caller stores the event as unpriced.
        """
        _require_aware(at)
        key = _key(provider, model)
        override = self._overrides.get(key)
        if override is not None:
            rate_set = override.rate_set
            return PriceQuote(
                cost_nano=rate_set.cost_nano(usage),
                source=OVERRIDE_SOURCE,
                version=override.override.version,
                provider=key[0],
                priced_model=key[1],
                rates=dict(rate_set.text),
            )
        entry = self._entry(key, provider, model)
        if entry is None:
            return None
        table = self._table(entry, at)
        if table is None:
            return None
        rate_set = table.rate_set(usage)
        return PriceQuote(
            cost_nano=rate_set.cost_nano(usage),
            source=LIBRARY_SOURCE,
            version=LIBRARY_VERSION,
            provider=entry.provider.id,
            priced_model=entry.model.id,
            rates=dict(rate_set.text),
        )

    def known(self, provider: str, model: str, at: datetime) -> bool:
        """Whether quote() would price this model at this time."""
        _require_aware(at)
        key = _key(provider, model)
        if key in self._overrides:
            return True
        entry = self._entry(key, provider, model)
        return entry is not None and self._table(entry, at) is not None

    def _entry(self, key: tuple[str, str], provider: str, model: str) -> _ModelEntry | None:
        cached = self._models.get(key)
        if cached is None:
            cached = self._resolve(provider, model)
            if len(self._models) >= _CACHE_LIMIT:
                self._models.clear()
            self._models[key] = cached
        return cached if isinstance(cached, _ModelEntry) else None

    def _resolve(self, provider: str, model: str) -> _ModelEntry | object:
        # A fresh snapshot per resolution: the library caches every reference it sees, which
        # is unbounded for arbitrary strings; ours is bounded and sits in front of it.
        snapshot = DataSnapshot(providers=self._providers, from_auto_update=False)
        try:
            found_provider, found_model = snapshot.find_provider_model(model, None, provider, None)
        except LookupError:
            return _UNKNOWN
        return _ModelEntry(found_provider, found_model)

    def _table(self, entry: _ModelEntry, at: datetime) -> _PriceTable | None:
        period = entry.period(at)
        try:
            return entry.by_period[period]
        except KeyError:
            pass
        table = self._units.compile(entry.model.get_prices(at))
        entry.by_period[period] = table
        return table


_default_book: PriceBook | None = None
_default_lock = threading.Lock()


def default_price_book() -> PriceBook:
    """The process-wide PriceBook without overrides, created on first use."""
    global _default_book
    book = _default_book
    if book is None:
        with _default_lock:
            book = _default_book
            if book is None:
                book = _default_book = PriceBook()
    return book
