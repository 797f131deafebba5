"""Provider usage as it comes: each provider's own usage object read with its own meaning.

An event carries either flat token counts (the Anthropic Messages API's meaning, optionally
with Anthropic's further usage fields) or ``usage``: the provider's object untouched. The
object's shape says how to read it:

* Anthropic Messages ``usage`` (``input_tokens`` without the cache; ``cache_creation``
  split by lifetime; ``server_tool_use.web_search_requests``; ``service_tier``);
* OpenAI Chat Completions ``CompletionUsage`` (``prompt_tokens`` includes the cached
  tokens; ``completion_tokens`` includes reasoning tokens);
* OpenAI Responses ``ResponseUsage`` (``input_tokens`` includes the cached tokens);
* Google Gemini ``usageMetadata`` (camelCase as on the wire, or the SDK's snake_case).

The field meanings are genai-prices' own extractors (``Provider.extract_usage`` with the
API flavour), not written again here. What they read becomes a ``TokenUsage`` (Anthropic
meaning plus further units) and a price context (batch, priority). Fields the extractors do
not read and this module does not know are kept (the object is stored as given) and never
fail the request; an unknown integer field named like a count of billable units
(``*_tokens``, ``*_requests``, ``*_token_count``) makes the event partially priced and is
named in ``unknown_units``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Final

from genai_prices.types import ArrayMatch, Provider, UsageExtractor

from tokenledger.pricing.engine import REPORTED_UNITS, PriceBook, TokenUsage
from tokenledger.schemas import MAX_TOKENS
from tokenledger.usage.schemas import MAX_USAGE_BYTES, UsageEventIn

# A reader: the provider whose genai-prices extractor reads the shape, and its API flavour.
_READERS: Final = {
    "anthropic": ("anthropic", "default"),
    "openai-chat": ("openai", "chat"),
    "openai-responses": ("openai", "responses"),
    "gemini": ("google", "default"),
}
# Fields of each shape that carry nothing billable beyond what the extractor reads (totals,
# labels, and parts of a total that is priced as a whole), as dotted paths; a path ending in
# ".*" covers everything below it.
_KNOWN: Final = {
    "anthropic": {
        "service_tier",
        "inference_geo",
        "speed",
        "server_tool_use.web_fetch_requests",  # fetches cost only their tokens
    },
    "openai-chat": {
        "total_tokens",
        "prompt_tokens_details.text_tokens",
        "prompt_tokens_details.image_tokens",
        "completion_tokens_details.text_tokens",
        "completion_tokens_details.accepted_prediction_tokens",
        "completion_tokens_details.rejected_prediction_tokens",
    },
    "openai-responses": {
        "total_tokens",
        "input_tokens_details.cache_write_tokens_details.*",
    },
    "gemini": {
        "totalTokenCount",
        "trafficType",
        "promptTokensDetails.*",
        "cacheTokensDetails.*",
        "candidatesTokensDetails.*",
        "toolUsePromptTokensDetails.*",
    },
}
_BILLABLE_NAME: Final = re.compile(r"(_tokens|_requests|_token_count)$")
_CAMEL_BOUNDARY: Final = re.compile(r"(?<!^)(?=[A-Z])")
_STANDARD_TIERS: Final = frozenset({"standard", "default", "auto"})
_SHAPE_PROVIDERS: Final = {
    "anthropic": "anthropic",
    "openai-responses": "openai",
    "gemini": "google",
}
UNKNOWN_PROVIDER: Final = "unknown"


class UsageReadError(ValueError):
    """A usage object that cannot be read: the message says why (shown to the caller)."""


@dataclass(frozen=True, slots=True)
class ReadUsage:
    tokens: TokenUsage
    context: dict[str, str]  # genai-prices price context: {"processing": "batch"}, ...
    unknown_units: tuple[str, ...]  # unknown billable-looking fields, as "usage.<path>"
    shape: str


def price_context(service_tier: str | None, speed: str | None = None) -> dict[str, str]:
    """The price context of a service tier and speed as the providers name them.

    ``batch`` (Anthropic's ``service_tier`` for Message Batches, or the caller's word for
    OpenAI's or Gemini's batch APIs) is genai-prices' ``processing: batch``; ``standard``,
    ``default`` and ``auto`` are the standard price; any other tier (``priority``, ``flex``,
    ``fast``) is passed on as ``service_tier``, and the price data decides.
    """
    context: dict[str, str] = {}
    if service_tier == "batch":
        context["processing"] = "batch"
    elif service_tier is not None and service_tier not in _STANDARD_TIERS:
        context["service_tier"] = service_tier
    if speed is not None and speed != "standard":
        context["speed"] = speed
    return context


def shape_of(provider: str | None, usage: Mapping[str, Any]) -> str:
    """Which API's usage this is, from its fields (and the provider, where shapes overlap)."""
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        return "openai-chat"
    if any(
        key in usage
        for key in (
            "promptTokenCount",
            "candidatesTokenCount",
            "prompt_token_count",
            "candidates_token_count",
            "totalTokenCount",
            "total_token_count",
        )
    ):
        return "gemini"
    if "input_tokens" in usage or "output_tokens" in usage:
        # Anthropic's and OpenAI Responses' usage share these names; Responses alone
        # reports totals and *_details of the input.
        if provider == "anthropic":
            return "anthropic"
        if provider == "openai" or any(
            key in usage for key in ("total_tokens", "input_tokens_details")
        ):
            return "openai-responses"
        return "anthropic"
    raise UsageReadError(
        "usage: not a usage object of a known API (Anthropic Messages, OpenAI Chat "
        "Completions or Responses, Gemini usageMetadata)"
    )


def read_usage(
    provider: str | None,
    usage: Mapping[str, Any],
    service_tier: str | None = None,
    shape: str | None = None,
) -> ReadUsage:
    """Read a provider's usage object; ``service_tier`` is the event's (OpenAI's is there).

    ``shape`` is known when re-reading a stored object; else it is told by the fields.
    """
    size = len(json.dumps(usage, separators=(",", ":")))
    if size > MAX_USAGE_BYTES:
        raise UsageReadError(f"usage is limited to {MAX_USAGE_BYTES} bytes of JSON")
    if shape not in _READERS:
        shape = shape_of(provider, usage)
    data = _camel(usage) if shape == "gemini" else usage
    reader_provider, flavor = _READERS[shape]
    extractor = _extractor(reader_provider, flavor)
    try:
        _model, extracted = extractor.extract(
            {"usageMetadata" if shape == "gemini" else "usage": data}
        )
    except (ValueError, TypeError) as exc:
        raise UsageReadError(f"usage: {exc}") from exc
    values: dict[str, int] = {}
    for key, value in vars(extracted).items():
        if key not in REPORTED_UNITS:
            continue
        if type(value) is not int:  # 2.5 tokens is no count: never rounded silently
            raise UsageReadError(f"usage: {key} must be a whole number, got {value!r}")
        if not 0 <= value <= MAX_TOKENS:  # the bound of the flat counts, 10^9 each
            raise UsageReadError(f"usage: {key} must be between 0 and {MAX_TOKENS}")
        values[key] = value
    tokens = _token_usage(values)
    context: dict[str, str] = {}
    if shape == "anthropic":
        tier = data.get("service_tier")
        speed = data.get("speed")
        context = price_context(
            tier if isinstance(tier, str) else None, speed if isinstance(speed, str) else None
        )
    if service_tier is not None:
        context.update(price_context(service_tier))
    # named as the caller sent them (Gemini's known paths come in both spellings)
    unknown = tuple(f"usage.{path}" for path in _unknown_counts(usage, _known_paths(shape)))
    return ReadUsage(tokens=tokens, context=context, unknown_units=unknown, shape=shape)


@dataclass(frozen=True, slots=True)
class EventUsage:
    """What an event's usage says, ready to price and store."""

    provider: str
    tokens: TokenUsage
    context: dict[str, str]
    unknown_units: tuple[str, ...]
    stored: dict[str, Any] | None  # kept with the event, so that a later fix can re-read it


def event_usage(event: UsageEventIn, book: PriceBook) -> EventUsage:
    """The usage of one event, flat or as the provider's object, with its provider.

    The provider is the event's, else the one whose models the model name matches (an
    override's or genai-prices'), else the API whose usage shape the object has, else
    ``unknown`` (stored unpriced, never guessed as another provider's model).
    """
    provider = event.provider or book.provider_for(event.model)
    if event.usage is not None:
        reading = read_usage(event.provider, event.usage, event.service_tier)
        provider = provider or _SHAPE_PROVIDERS.get(reading.shape) or UNKNOWN_PROVIDER
        stored: dict[str, Any] = {"usage": event.usage, "shape": reading.shape}
        if event.service_tier is not None:
            stored["service_tier"] = event.service_tier
        return EventUsage(provider, reading.tokens, reading.context, reading.unknown_units, stored)
    provider = provider or UNKNOWN_PROVIDER
    extras = event.anthropic_extras()
    if not extras:  # the common case, kept cheap: the flat counts are the whole story
        tokens = TokenUsage(
            input_tokens=event.input_tokens,
            output_tokens=event.output_tokens,
            cache_creation_input_tokens=event.cache_write_tokens,
            cache_read_input_tokens=event.cache_read_input_tokens,
            cache_write_1h_tokens=event.cache_write_1h_tokens,
        )
        return EventUsage(provider, tokens, {}, (), None)
    usage: dict[str, Any] = {
        "input_tokens": event.input_tokens,
        "output_tokens": event.output_tokens,
        "cache_creation_input_tokens": event.cache_write_tokens,
        "cache_read_input_tokens": event.cache_read_input_tokens,
    }
    if event.cache_creation is not None:
        usage["cache_creation"] = event.cache_creation.model_dump()
    usage.update(extras)
    reading = read_usage("anthropic", usage, shape="anthropic")
    stored = {"usage": usage, "shape": "anthropic"}
    return EventUsage(provider, reading.tokens, reading.context, reading.unknown_units, stored)


def reread(provider: str | None, stored: Mapping[str, Any]) -> ReadUsage:
    """A stored event's ``usage_object`` read again, e.g. to price it anew after a fix."""
    return read_usage(provider, stored["usage"], stored.get("service_tier"), stored.get("shape"))


def _token_usage(values: dict[str, int]) -> TokenUsage:
    """genai-prices' meaning (input is the whole prompt) to ours (Anthropic's)."""
    prompt = values.pop("input_tokens", 0)
    output = values.pop("output_tokens", 0)
    cache_read = values.pop("cache_read_tokens", 0)
    write_5m = values.pop("cache_write_5m_tokens", None)
    write_1h = values.pop("cache_write_1h_tokens", 0)
    writes = values.pop("cache_write_tokens", None)
    split = (write_5m or 0) + write_1h
    if writes is None:
        writes = split
    elif split and split != writes:
        raise UsageReadError(
            f"usage: the cache_creation split ({split}) does not add up to the cache writes "
            f"({writes})"
        )
    if cache_read + writes > prompt:
        raise UsageReadError(
            f"usage: cached tokens ({cache_read} read, {writes} written) exceed the prompt "
            f"({prompt})"
        )
    try:
        return TokenUsage(
            input_tokens=prompt - cache_read - writes,
            output_tokens=output,
            cache_creation_input_tokens=writes,
            cache_read_input_tokens=cache_read,
            cache_write_1h_tokens=write_1h,
            units={key: value for key, value in values.items() if value},
        )
    except (TypeError, ValueError) as exc:
        raise UsageReadError(f"usage: {exc}") from exc


@cache
def _extractor(provider_id: str, flavor: str) -> UsageExtractor:
    # The bundled price data: a large module, loaded at first use (app.py loads it at
    # start-up); no circle needs the deferral.
    from genai_prices.data import providers

    provider: Provider = next(p for p in providers if p.id == provider_id)
    return next(e for e in provider.extractors or () if e.api_flavor == flavor)


@cache
def _known_paths(shape: str) -> frozenset[str]:
    """Paths the extractor reads, and their containers, plus the shape's known fields."""
    known = set(_KNOWN[shape])
    for mapping in _extractor(*_READERS[shape]).mappings:
        path = [mapping.path] if isinstance(mapping.path, str) else list(mapping.path)
        names: list[str] = []
        for step in path:
            if isinstance(step, ArrayMatch):
                known.add(".".join(names) + ".*")
                break
            names.append(step)
            known.add(".".join(names))
    if shape == "gemini":  # the SDK's snake_case dump as well as the API's camelCase
        known |= {".".join(_snake(part) for part in path.split(".")) for path in known}
    return frozenset(known)


def _unknown_counts(data: Mapping[str, Any], known: frozenset[str]) -> Iterator[str]:
    """Paths of integer fields that look like billable counts and that no reader knows."""

    def walk(node: Mapping[str, Any], prefix: str) -> Iterator[str]:
        for name, value in node.items():
            path = f"{prefix}{name}"
            if path in known and not isinstance(value, Mapping):
                continue
            if any(
                pattern.endswith(".*") and (path + ".").startswith(pattern[:-1])
                for pattern in known
            ):
                continue
            if isinstance(value, Mapping):
                yield from walk(value, path + ".")
            elif (
                path not in known
                and type(value) is int
                and value > 0
                and _BILLABLE_NAME.search(_snake(str(name)))
            ):
                yield path

    return walk(data, "")


def _snake(name: str) -> str:
    return _CAMEL_BOUNDARY.sub("_", name).lower()


def _camel(value: Any) -> Any:
    """The Gemini SDK's snake_case dump as the API's camelCase JSON (which the reader knows)."""
    if isinstance(value, Mapping):
        return {_camel_name(str(key)): _camel(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_camel(item) for item in value]
    return value


def _camel_name(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part[:1].upper() + part[1:] for part in rest)
