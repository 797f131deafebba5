"""The pricing engine: exact cost of one model call, with the price in force at its time.

Prices come from the pinned ``genai-prices`` package (its bundled data, never fetched and
never auto-updated here) or from operator overrides, which win.

Meaning of the token counts: ``TokenUsage`` carries the Anthropic Messages API meaning,
where ``input_tokens`` excludes cache reads and cache writes. genai-prices means the whole
prompt by ``input_tokens`` and counts 1-hour writes inside ``cache_write_tokens``; the
conversion is done once, in ``library_usage_values``.

How genai-prices prices a request, reproduced here exactly:

* every unit genai-prices defines can be priced: tokens by direction, modality and kind
  (cache reads, cache writes by lifetime, reasoning, audio, ...), tool calls (web searches
  and others, per 1000), and a price per request;
* every priced unit takes the usage of its own kind that no more specific priced unit
  takes: a 1-hour cache write is priced at ``cache_write_1h_mtok`` if the model has it,
  else at ``cache_write_mtok``, else as plain input; a cache read at ``cache_read_mtok``,
  else as plain input; reasoning tokens as output unless the model prices them apart;
* a unit the call used that no priced unit contains (two web searches on a model without
  a search price) is named in ``PriceQuote.unpriced_units``: the cost is then incomplete;
* a price context (``{"processing": "batch"}``, ``{"service_tier": "priority"}``) selects
  the model's price variants, per price key, as genai-prices does;
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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
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
from types import MappingProxyType
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

from tokenledger.money import NANO_PER_USD, divide_half_even, usd_to_nano

__all__ = [
    "LIBRARY_SOURCE",
    "LIBRARY_VERSION",
    "OVERRIDE_SOURCE",
    "REPORTED_UNITS",
    "PriceBook",
    "PriceOverride",
    "PriceQuote",
    "Rates",
    "TokenUsage",
    "UsageError",
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


_NO_UNITS: Final[Mapping[str, int]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Token counts with the Anthropic Messages API meaning, and any further billable units.

    ``units`` holds the other usage keys of genai-prices (its own meaning, e.g.
    ``web_searches``, ``output_reasoning_tokens``, ``input_audio_tokens``): counts that lie
    inside the totals above (reasoning tokens are part of the output, audio tokens part of
    the prompt) or that stand alone (web searches and other tool calls).
    """

    input_tokens: int = 0  # excludes cache reads and writes (Anthropic meaning)
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0  # all cache writes, 5m and 1h together
    cache_read_input_tokens: int = 0
    # the part of cache_creation_input_tokens written with 1h TTL
    cache_write_1h_tokens: int = 0
    units: Mapping[str, int] = field(default_factory=dict)

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
        if not self.units:  # the common case, kept cheap: one shared empty mapping
            object.__setattr__(self, "units", _NO_UNITS)
            return
        units = dict(self.units)
        for key, value in units.items():
            if key in _CORE_KEYS or key not in REPORTED_UNITS:
                raise ValueError(f"{key!r} is not a further usage unit of genai-prices")
            _check_count(key, value)
        object.__setattr__(self, "units", MappingProxyType(units))

    @property
    def cache_write_5m_tokens(self) -> int:
        """Cache writes with the 5-minute TTL."""
        return self.cache_creation_input_tokens - self.cache_write_1h_tokens

    @property
    def prompt_tokens(self) -> int:
        """The whole prompt: input, cache reads and cache writes (what tiers count)."""
        return self.input_tokens + self.cache_read_input_tokens + self.cache_creation_input_tokens


def _check_count(name: str, value: object) -> None:
    if type(value) is not int:
        raise TypeError(f"{name} must be an int")
    if not 0 <= value <= MAX_TOKENS:
        raise ValueError(f"{name} must be between 0 and {MAX_TOKENS}")


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
        **usage.units,
    }


class UsageError(ValueError):
    """Usage that genai-prices cannot price either: a part larger than its whole."""


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per million tokens, exact decimals.

    A missing cache rate falls back the way genai-prices does for its own data: a cache
    read or a 5-minute write is priced as input, a 1-hour write as a 5-minute write if that
    is set, else as input. ``units`` adds rates of further units by genai-prices' price key
    (e.g. ``{"web_searches_kcount": Decimal("10")}``, USD per 1000 searches).
    """

    input: Decimal | TieredPrices
    output: Decimal | TieredPrices
    cache_write_5m: Decimal | TieredPrices | None = None
    cache_write_1h: Decimal | TieredPrices | None = None
    cache_read: Decimal | TieredPrices | None = None
    units: Mapping[str, Decimal] = field(default_factory=dict)

    def __post_init__(self) -> None:
        values: dict[str, Decimal | TieredPrices | None] = {
            name: getattr(self, name)
            for name in ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")
        }
        for key in self.units:
            if key in _CORE_PRICE_KEYS or key not in _REGISTRY._units_by_price_key:
                raise ValueError(f"{key!r} is not a further price key of genai-prices")
        values.update(self.units)
        for name, value in values.items():
            if value is None and name not in ("input", "output"):
                continue
            # A token rate may have long-context tiers, as genai-prices' own prices do.
            if isinstance(value, TieredPrices) and name not in self.units:
                if _valid_price(value) is None:
                    raise ValueError(f"rate {name}: tiers must be valid, in ascending order")
                continue
            if not isinstance(value, Decimal):
                raise TypeError(f"rate {name} must be a Decimal")
            if not value.is_finite() or value < 0:
                raise ValueError(f"rate {name} must be a finite, non-negative decimal")
        object.__setattr__(self, "units", MappingProxyType(dict(self.units)))


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
    # "requests_per_k" when the model also has a per-request price (USD per 1000 requests);
    # the library's price key of each further unit the call used (e.g. "web_searches_kcount",
    # USD per 1000); "context" when a price variant (batch, priority) was asked for.
    rates: dict[str, str]
    # Units the call used that no rate covers (e.g. "web_searches" on a model without a
    # search price): cost_nano then holds only the rest, and the event is partially priced.
    unpriced_units: tuple[str, ...] = ()


# --- compiled prices -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _PricedUnit:
    usage_key: str
    rate: Decimal  # USD per `per` units, after tier selection
    per: int
    descendants: tuple[int, ...]  # positions of the more specific priced units


@dataclass(frozen=True, slots=True)
class _RateSet:
    """The prices of one tier level, ready to apply, most specific unit first."""

    units: tuple[_PricedUnit, ...]
    fixed_usd: Decimal  # per-request price of one request, in USD
    text: Mapping[str, str]  # the category rates, tier and per-request price
    unit_text: Mapping[str, tuple[str, str]]  # usage key -> (price key, rate) of further units
    covered: Callable[[str], bool]  # whether some priced unit takes this usage key
    # The rate of each token category (the most specific priced unit containing it), and
    # whether every category has one: then usage of those categories alone is priced by
    # five multiplications, which is what the decomposition below comes to for it.
    input: Decimal
    output: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal
    cache_read: Decimal
    categories_priced: bool
    # The same five rates and the per-request price as whole units of 10**-scale USD per
    # million tokens (and per request, times a million), for the five multiplications in
    # integers: the same exact sum as in Decimal, at a fraction of the cost.
    _scaled_rates: tuple[int, int, int, int, int] = field(init=False)
    _scaled_fixed: int = field(init=False)
    _denominator: int = field(init=False)  # 10**(scale + 6): the sum's units per USD

    def __post_init__(self) -> None:
        rates = (self.input, self.output, self.cache_write_5m, self.cache_write_1h, self.cache_read)
        if not self.categories_priced:
            object.__setattr__(self, "_scaled_rates", (0, 0, 0, 0, 0))
            object.__setattr__(self, "_scaled_fixed", 0)
            object.__setattr__(self, "_denominator", 1)
            return
        scale = max(
            0,
            *(-_exponent(rate) for rate in rates),
            -_exponent(self.fixed_usd) - 6,
        )
        with localcontext(_EXACT):  # exact by construction; Inexact would raise
            scaled = tuple(int(rate.scaleb(scale)) for rate in rates)
            fixed = int(self.fixed_usd.scaleb(scale + 6))
        object.__setattr__(self, "_scaled_rates", scaled)
        object.__setattr__(self, "_scaled_fixed", fixed)
        object.__setattr__(self, "_denominator", 10 ** (scale + 6))

    def cost(self, usage: TokenUsage) -> tuple[int, tuple[str, ...], dict[str, str]]:
        """Cost in nano-USD, the units used that no rate covers, and the rates applied."""
        if not usage.units and self.categories_priced:
            input_rate, output_rate, write_5m, write_1h, read = self._scaled_rates
            total = (
                input_rate * usage.input_tokens
                + output_rate * usage.output_tokens
                + write_5m * usage.cache_write_5m_tokens
                + write_1h * usage.cache_write_1h_tokens
                + read * usage.cache_read_input_tokens
                + self._scaled_fixed
            )
            cost = divide_half_even(total * NANO_PER_USD, self._denominator)
            return cost, (), dict(self.text)
        return self.decomposed_cost(library_usage_values(usage))

    def decomposed_cost(
        self, values: Mapping[str, int]
    ) -> tuple[int, tuple[str, ...], dict[str, str]]:
        """genai-prices' own way, for any units: each priced unit takes its leaf."""
        leaves: list[int] = []
        total = _ZERO
        with localcontext(_EXACT):
            for unit in self.units:
                # genai-prices' decomposition: a unit takes what its more specific priced
                # units do not.
                leaf = _usage_value(values, unit.usage_key) - sum(
                    leaves[i] for i in unit.descendants
                )
                if leaf < 0:
                    raise UsageError(
                        f"usage of a part exceeds its whole at {unit.usage_key} "
                        f"({_usage_value(values, unit.usage_key)})"
                    )
                leaves.append(leaf)
                if leaf:
                    total += unit.rate * leaf / unit.per
            total += self.fixed_usd
            cost = usd_to_nano(total)
        unpriced = tuple(
            sorted(key for key, value in values.items() if value and not self.covered(key))
        )
        text = dict(self.text)
        for key, value in values.items():
            if value and key in self.unit_text:
                price_key, rate = self.unit_text[key]
                text[price_key] = rate
        return cost, unpriced, text


def _exponent(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int), value  # rates are finite (checked when built)
    return exponent


def _usage_value(values: Mapping[str, int], usage_key: str) -> int:
    """A reported count; an unreported one is 0 unless genai-prices would refuse to guess."""
    value = values.get(usage_key)
    if value is not None:
        return value
    unit = _REGISTRY.units[usage_key]
    reported = [
        _REGISTRY.units[key] for key, count in values.items() if count and key in _REGISTRY.units
    ]
    if any(other is not unit and _contains(unit, other) for other in reported):
        raise UsageError(f"missing usage for {usage_key}: give it explicitly")
    for index, left in enumerate(reported):
        for right in reported[index + 1 :]:
            if (
                left.is_compatible_with(right)
                and not _contains(left, right)
                and not _contains(right, left)
                and dict(unit.dimensions) == {**left.dimensions, **right.dimensions}
            ):
                raise UsageError(f"missing usage for {usage_key}: give it explicitly")
    return 0


def _contains(ancestor: UnitDef, descendant: UnitDef) -> bool:
    return ancestor.dimensions.items() <= descendant.dimensions.items()


@dataclass(frozen=True, slots=True)
class _PriceTable:
    """A resolved price: rate sets by tier level (the number of tier starts below the prompt)."""

    starts: tuple[int, ...]
    levels: tuple[_RateSet, ...]

    def rate_set(self, prompt_tokens: int) -> _RateSet:
        if not self.starts:
            return self.levels[0]
        return self.levels[bisect_left(self.starts, prompt_tokens)]


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
                or tier.start < 0
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


_REGISTRY: Final = UnitRegistry(unit_data)
# Every usage key a call may report (genai-prices' "reported" keys: all but requests).
REPORTED_UNITS: Final = frozenset(key for key in _REGISTRY.units if key != "requests")
_CORE_KEYS: Final = frozenset(
    (
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "cache_write_5m_tokens",
        "cache_write_1h_tokens",
    )
)
_CORE_PRICE_KEYS: Final = frozenset(_REGISTRY.units[key].price_key for key in _CORE_KEYS)


class _Units:
    """genai-prices' unit registry, built from its public unit data."""

    def __init__(self) -> None:
        self.registry = _REGISTRY
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

        request_price = next(
            (price for unit, price in priced if unit.usage_key == self.requests.usage_key), None
        )
        token_units = sorted(
            ((unit, price) for unit, price in priced if unit.usage_key != "requests"),
            key=lambda item: (-len(item[0].dimensions), item[0].usage_key),
        )
        descendants = tuple(
            tuple(
                index
                for index, (other, _) in enumerate(token_units)
                if other is not unit and _contains(unit, other)
            )
            for unit, _ in token_units
        )
        priced_units = [unit for unit, _ in token_units]
        coverage: dict[str, bool] = {}

        def covered(usage_key: str) -> bool:
            found = coverage.get(usage_key)
            if found is None:
                target = self.registry.units[usage_key]
                found = coverage[usage_key] = any(_contains(u, target) for u in priced_units)
            return found

        # Each category of tokens is priced by the most specific priced unit that contains it
        # (the text stored with each event; the cost itself is computed unit by unit).
        category_prices: dict[str, Decimal | TieredPrices | None] = {}
        for name, category in self.categories:
            best: tuple[UnitDef, Decimal | TieredPrices] | None = None
            for unit, price in priced:
                if _contains(unit, category) and (
                    best is None or len(unit.dimensions) > len(best[0].dimensions)
                ):
                    best = (unit, price)
            category_prices[name] = None if best is None else best[1]

        tiered = [price for _, price in priced if isinstance(price, TieredPrices)]
        starts = tuple(sorted({tier.start for price in tiered for tier in price.tiers}))
        levels: list[_RateSet] = []
        for level in range(len(starts) + 1):
            # A prompt size inside this level: above `level` starts, not above the rest.
            prompt = 0 if level == 0 else starts[level - 1] + 1
            rates = {name: _applicable(category_prices[name], prompt) for name, _ in _CATEGORIES}
            text = {name: _decimal_text(rate) for name, rate in rates.items()}
            units = tuple(
                _PricedUnit(unit.usage_key, _applicable(price, prompt), unit.per, descendants[i])
                for i, (unit, price) in enumerate(token_units)
            )
            unit_text = {
                priced_unit.usage_key: (unit.price_key, _decimal_text(priced_unit.rate))
                for priced_unit, (unit, _) in zip(units, token_units, strict=True)
                if unit.usage_key not in _CORE_KEYS
            }
            fixed = _ZERO
            if request_price is not None:
                per_k = _applicable(request_price, prompt)
                text["requests_per_k"] = _decimal_text(per_k)
                with localcontext(_EXACT):
                    fixed = per_k / self.requests.per
            if level > 0:
                base = levels[0]
                if any(
                    unit.rate != base_unit.rate
                    for unit, base_unit in zip(units, base.units, strict=True)
                ) or (fixed != base.fixed_usd):
                    text["tier"] = f"prompt_tokens>{starts[level - 1]}"
            levels.append(
                _RateSet(
                    units=units,
                    fixed_usd=fixed,
                    text=text,
                    unit_text=unit_text,
                    covered=covered,
                    input=rates["input"],
                    output=rates["output"],
                    cache_write_5m=rates["cache_write_5m"],
                    cache_write_1h=rates["cache_write_1h"],
                    cache_read=rates["cache_read"],
                    categories_priced=all(
                        category_prices[name] is not None for name, _ in _CATEGORIES
                    ),
                )
            )
        return _PriceTable(starts=starts, levels=tuple(levels))


def _utc_naive_time(value: time) -> time:
    """A constraint's time of day in UTC, without tzinfo (naive means UTC, as in genai-prices)."""
    if value.tzinfo is None:
        return value
    aware = datetime.combine(date(1970, 1, 1), value).astimezone(UTC)
    return aware.time()


_Variant = tuple[tuple[str, str], ...]  # a price context (service tier, batch) as sorted pairs


class _ModelEntry:
    """A resolved (provider, model): its library objects and its compiled prices by period."""

    __slots__ = ("_dates", "_times", "by_period", "model", "own_model", "provider")

    def __init__(self, provider: Provider, model: ModelInfo) -> None:
        self.provider = provider
        self.model = model
        # genai-prices applies price variants only to a provider's own models, not to those
        # it finds through a fallback provider.
        self.own_model = any(model is candidate for candidate in provider.models)
        dates: set[date] = set()
        times: set[time] = set()
        constraints = (
            []
            if isinstance(model.prices, ModelPrice)
            else [conditional.constraint for conditional in model.prices]
        )
        constraints += [variant.constraint for variant in model.price_variants or ()]
        for constraint in constraints:
            if isinstance(constraint, StartDateConstraint):
                dates.add(constraint.start_date)
            elif isinstance(constraint, TimeOfDateConstraint):
                times.add(_utc_naive_time(constraint.start_time))
                times.add(_utc_naive_time(constraint.end_time))
        # Between two consecutive boundaries no constraint can change its answer, so the
        # library's choice of price is the same: that span is one price period.
        self._dates = tuple(sorted(dates))
        self._times = tuple(sorted(times))
        self.by_period: dict[tuple[int, int, _Variant], _PriceTable | None] = {}

    def period(self, at: datetime, context: _Variant) -> tuple[int, int, _Variant]:
        if not self.own_model or not self.model.price_variants:
            context = ()
        if not self._dates and not self._times:
            return (0, 0, context)
        utc = at.astimezone(UTC)
        return (
            bisect_right(self._dates, utc.date()),
            bisect_right(self._times, utc.time()),
            context,
        )


_UNKNOWN: Final = object()


def _require_aware(at: datetime) -> None:
    if not isinstance(at, datetime) or at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("at must be a timezone-aware datetime")


def _key(provider: str, model: str) -> tuple[str, str]:
    return (provider.strip().lower(), model.lower())


def _context(context: Mapping[str, str] | None) -> _Variant:
    return tuple(sorted(context.items())) if context else ()


class _CompiledOverride:
    __slots__ = ("override", "table")

    def __init__(self, override: PriceOverride, units: _Units) -> None:
        rates = override.rates
        cache_write_5m = rates.cache_write_5m if rates.cache_write_5m is not None else rates.input
        cache_write_1h = (
            rates.cache_write_1h if rates.cache_write_1h is not None else cache_write_5m
        )
        cache_read = rates.cache_read if rates.cache_read is not None else rates.input
        # The same compilation as the library's prices: an override is one more ModelPrice.
        table = units.compile(
            ModelPrice(
                input_mtok=rates.input,
                output_mtok=rates.output,
                cache_write_mtok=cache_write_5m,
                cache_write_1h_mtok=cache_write_1h,
                cache_read_mtok=cache_read,
                **rates.units,
            )
        )
        if table is None:
            raise ValueError(f"override {override.provider}/{override.model}: unusable rates")
        self.override = override
        self.table = table


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
                _CompiledOverride(override, self._units)
            )
        self._override_providers: dict[str, str] = {}
        for provider, model in sorted(self._overrides):
            self._override_providers.setdefault(model, provider)
        self._models: dict[tuple[str, str], _ModelEntry | object] = {}
        self._inferred: dict[str, str | None] = {}

    def quote(
        self,
        provider: str,
        model: str,
        usage: TokenUsage,
        at: datetime,
        context: Mapping[str, str] | None = None,
    ) -> PriceQuote | None:
        """The cost of one call, or None when nobody can price this model.

        None means an unknown model or provider: the caller stores the event as unpriced.
        ``context`` selects genai-prices' price variants, e.g. ``{"processing": "batch"}``
        or ``{"service_tier": "priority"}``; overrides have no variants. Raises UsageError
        for counts that contradict each other (a part larger than its whole).
        """
        _require_aware(at)
        key = _key(provider, model)
        override = self._overrides.get(key)
        if override is not None:
            cost, unpriced, text = override.table.rate_set(usage.prompt_tokens).cost(usage)
            return PriceQuote(
                cost_nano=cost,
                source=OVERRIDE_SOURCE,
                version=override.override.version,
                provider=key[0],
                priced_model=key[1],
                rates=text,
                unpriced_units=unpriced,
            )
        entry = self._entry(key, provider, model)
        if entry is None:
            return None
        wanted = _context(context)
        period = entry.period(at, wanted)
        table = self._table(entry, at, period)
        if table is None:
            return None
        cost, unpriced, text = table.rate_set(usage.prompt_tokens).cost(usage)
        if period[2]:
            text["context"] = ",".join(f"{name}={value}" for name, value in period[2])
        return PriceQuote(
            cost_nano=cost,
            source=LIBRARY_SOURCE,
            version=LIBRARY_VERSION,
            provider=entry.provider.id,
            priced_model=entry.model.id,
            rates=text,
            unpriced_units=unpriced,
        )

    def known(self, provider: str, model: str, at: datetime) -> bool:
        """Whether quote() would price this model at this time."""
        _require_aware(at)
        key = _key(provider, model)
        if key in self._overrides:
            return True
        entry = self._entry(key, provider, model)
        return entry is not None and self._table(entry, at, entry.period(at, ())) is not None

    def context_window(self, provider: str, model: str) -> int | None:
        """The model's context window in tokens (genai-prices' data), None when unknown.

        No call's prompt and output together exceed it, so it bounds both.
        """
        entry = self._entry(_key(provider, model), provider, model)
        window = entry.model.context_window if entry is not None else None
        return window if isinstance(window, int) and window > 0 else None

    def provider_for(self, model: str) -> str | None:
        """The provider a bare model name belongs to: an override's, else genai-prices' match.

        genai-prices matches providers by model name (``claude*`` is Anthropic, ``gpt-*`` and
        ``o3`` OpenAI, ``gemini*`` Google); None when nothing matches.
        """
        name = model.lower()
        if name in self._override_providers:
            return self._override_providers[name]
        if name in self._inferred:
            return self._inferred[name]
        snapshot = DataSnapshot(providers=self._providers, from_auto_update=False)
        try:
            found: str | None = snapshot.find_provider(name, None, None).id
        except LookupError:
            found = None
        if len(self._inferred) >= _CACHE_LIMIT:
            self._inferred.clear()
        self._inferred[name] = found
        return found

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

    def _table(
        self, entry: _ModelEntry, at: datetime, period: tuple[int, int, _Variant]
    ) -> _PriceTable | None:
        try:
            return entry.by_period[period]
        except KeyError:
            pass
        if len(entry.by_period) >= _CACHE_LIMIT:  # contexts come from callers: bounded
            entry.by_period.clear()
        table = self._units.compile(entry.model.get_prices(at, dict(period[2]) or None))
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
