"""Usage events in the ingestion API's shape, built and serialized once at record time."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

log = logging.getLogger("tokenledger.client")

MAX_ID_LENGTH = 128


@dataclass(frozen=True, slots=True)
class Event:
    """One serialized event: the exact line kept in the spool and sent in a batch."""

    id: str
    line: str


def _fields_of(value: object) -> object:
    """Mappings as they are, pydantic models (the Anthropic SDK's) as their dump."""
    if isinstance(value, Mapping):
        return value
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        dumped = dump()
        if isinstance(dumped, Mapping):
            return dumped
    return value


def _read(source: object, name: str) -> Any:
    if isinstance(source, Mapping):
        return source.get(name)
    return getattr(source, name, None)


def _tokens(value: Any, name: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"usage.{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"usage.{name} must not be negative")
    return value


def usage_fields(usage: object) -> dict[str, Any]:
    """The token fields of an Anthropic `message.usage` (object or dict); None counts as 0."""
    if usage is None:
        raise TypeError("usage is required: pass message.usage or a dict of token counts")
    source = _fields_of(usage)
    fields: dict[str, Any] = {
        "input_tokens": _tokens(_read(source, "input_tokens"), "input_tokens"),
        "output_tokens": _tokens(_read(source, "output_tokens"), "output_tokens"),
        "cache_creation_input_tokens": _tokens(
            _read(source, "cache_creation_input_tokens"), "cache_creation_input_tokens"
        ),
        "cache_read_input_tokens": _tokens(
            _read(source, "cache_read_input_tokens"), "cache_read_input_tokens"
        ),
    }
    split_source = _read(source, "cache_creation")
    if split_source is None:
        return fields
    split_source = _fields_of(split_source)
    split = {
        name: _tokens(_read(split_source, name), f"cache_creation.{name}")
        for name in ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens")
    }
    split_total = sum(split.values())
    if split_total == 0:
        # An all-zero split says nothing the total does not; leaving it out keeps one
        # canonical content for the same usage, whichever shape it came in.
        return fields
    total_given = _read(source, "cache_creation_input_tokens") is not None
    if total_given and fields["cache_creation_input_tokens"] != split_total:
        # The server refuses a split that does not add up to the total, which would
        # dead-letter a real call; the total is the long-standing field, so it wins.
        log.warning(
            "usage.cache_creation (%d tokens) does not add up to cache_creation_input_tokens "
            "(%d); sending the total without the 5m/1h split",
            split_total,
            fields["cache_creation_input_tokens"],
        )
        return fields
    fields["cache_creation_input_tokens"] = split_total
    fields["cache_creation"] = split
    return fields


# What the server takes beside the flat token counts of an Anthropic usage (the rest of a
# newer SDK's usage goes as the `usage` object, which keeps unknown fields).
_ANTHROPIC_FLAT = frozenset(
    {
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "cache_creation",
    }
)
_ANTHROPIC_EXTRAS = ("server_tool_use", "service_tier", "inference_geo", "speed")
_ANTHROPIC_EXTRAS_DETAILS = "output_tokens_details"
_GEMINI_KEYS = frozenset(
    {
        "promptTokenCount",
        "candidatesTokenCount",
        "totalTokenCount",
        "prompt_token_count",
        "candidates_token_count",
        "total_token_count",
    }
)


def _module_provider(value: object) -> str | None:
    """The provider whose SDK defined this object's class, by the module's name."""
    root = type(value).__module__.split(".", 1)[0]
    return {"anthropic": "anthropic", "openai": "openai", "google": "google"}.get(root)


def _as_dict(value: object) -> dict[str, Any] | None:
    """A usage object as JSON-ready data: a mapping, a pydantic model's dump, or its attributes."""
    if isinstance(value, Mapping):
        return dict(value)
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        try:
            dumped = dump(mode="json", exclude_none=True)
        except TypeError:  # not pydantic's signature
            dumped = dump()
        return dict(dumped) if isinstance(dumped, Mapping) else None
    attributes = getattr(value, "__dict__", None)
    if isinstance(attributes, dict):
        return {k: v for k, v in attributes.items() if not k.startswith("_")}
    return None


def _unwrap(value: object) -> tuple[object, str | None, str | None]:
    """The usage inside what an SDK returned: (usage, provider by SDK, service tier).

    Message, ChatCompletion, its last streamed chunk, Response: `.usage`; the Anthropic
    stream's message_stop event: `.message.usage`; the Responses stream's completed event:
    `.response.usage`; Gemini's GenerateContentResponse: `.usage_metadata`. Dicts of each
    likewise.
    """
    provider = _module_provider(value)
    tier: str | None = None
    for _ in range(3):  # event -> message/response -> usage
        found = _read(value, "usage_metadata")
        if found is None:
            found = _read(value, "usageMetadata")
        if found is not None:
            return found, provider or "google", None
        carrier_tier = _read(value, "service_tier")
        usage = _read(value, "usage")
        if usage is not None and not isinstance(usage, int | float | str | bool):
            if isinstance(carrier_tier, str) and _read(usage, "service_tier") is None:
                tier = carrier_tier
            return usage, provider or _module_provider(usage), tier
        inner = _read(value, "message")
        if inner is None:
            inner = _read(value, "response")
        if inner is None or isinstance(inner, str):
            break
        value = inner
        provider = provider or _module_provider(value)
    return value, provider or _module_provider(value), tier


def _is_count(value: object) -> bool:
    return type(value) is int and value >= 0


def usage_body(usage: object, provider: str | None) -> tuple[str | None, dict[str, Any]]:
    """The event fields for what an SDK returned: flat Anthropic counts, or `usage` as given.

    The provider is the caller's, else the one whose SDK made the object, else the one
    whose API has this shape of usage (OpenAI's Chat Completions and Responses, Gemini's
    usageMetadata); a plain dict of Anthropic counts leaves it to the server to infer from
    the model. Raises TypeError for anything that is none of these.
    """
    if usage is None:
        raise TypeError("usage is required: pass message.usage or a dict of token counts")
    inner, sdk_provider, tier = _unwrap(usage)
    data = _as_dict(inner)
    if data is None:
        raise TypeError(f"cannot read usage from a {type(usage).__name__}")
    shape = _shape(data, provider or sdk_provider)
    if shape == "anthropic":
        unknown = set(data) - _ANTHROPIC_FLAT - set(_ANTHROPIC_EXTRAS)
        unknown.discard(_ANTHROPIC_EXTRAS_DETAILS)
        if not unknown:
            flat = usage_fields(data)
            for name in (*_ANTHROPIC_EXTRAS, _ANTHROPIC_EXTRAS_DETAILS):
                if data.get(name) is not None:
                    flat[name] = data[name]
            return provider or sdk_provider, flat
        # fields this client does not know (a newer SDK): the object goes as it is
        _check_counts(data, ("input_tokens", "output_tokens"))
        return provider or sdk_provider or "anthropic", {"usage": data}
    if shape == "openai-chat":
        _check_counts(data, ("prompt_tokens", "completion_tokens"))
    elif shape == "openai-responses":
        _check_counts(data, ("input_tokens", "output_tokens"))
    else:
        _check_counts(data, tuple(key for key in data if key in _GEMINI_KEYS))
    body: dict[str, Any] = {"usage": data}
    if tier is not None:
        body["service_tier"] = tier
    default = "google" if shape == "gemini" else "openai"
    return provider or sdk_provider or default, body


def _shape(data: Mapping[str, Any], provider: str | None) -> str:
    if "prompt_tokens" in data or "completion_tokens" in data:
        return "openai-chat"
    if _GEMINI_KEYS & data.keys():
        return "gemini"
    if "input_tokens" in data or "output_tokens" in data:
        if provider == "anthropic":
            return "anthropic"
        if provider == "openai" or "total_tokens" in data or "input_tokens_details" in data:
            return "openai-responses"
        return "anthropic"
    raise TypeError(
        "cannot read this usage: expected an Anthropic Usage or Message, an OpenAI "
        "CompletionUsage or ResponseUsage (or the object carrying it), a Gemini "
        "usage_metadata, or a dict of one of these"
    )


def _check_counts(data: Mapping[str, Any], names: tuple[str, ...]) -> None:
    if not names:
        raise TypeError("usage carries no token counts")
    for name in names:
        value = data.get(name)
        if value is not None and not _is_count(value):
            raise TypeError(f"usage.{name} must be a non-negative int, got {value!r}")


def timestamp_text(value: datetime | str | None, name: str = "timestamp") -> str:
    """RFC 3339 text with an offset; now (UTC) when not given."""
    if value is None:
        return datetime.now(UTC).isoformat()
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(f"{name} must be RFC 3339, e.g. 2026-01-31T12:00:00Z") from exc
    else:
        raise TypeError(f"{name} must be a datetime or an RFC 3339 string")
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError(f"{name} needs a timezone (an aware datetime, or Z / +01:00)")
    # Rewritten, because fromisoformat takes ISO 8601 forms the server refuses ("...T10:00Z").
    return parsed.isoformat()


def new_event_id(provider: str, metadata: Mapping[str, Any] | None) -> str:
    """A deterministic id from metadata's `message_id` when there is one, else a random one."""
    message_id = metadata.get("message_id") if metadata else None
    if isinstance(message_id, str) and message_id:
        # The same provider message is one event however often it is recorded.
        seed = f"{provider.strip().lower()}\n{message_id}"
        return "msg-" + hashlib.sha256(seed.encode()).hexdigest()[:32]
    return uuid.uuid4().hex


def _usd_text(value: Decimal | int | float | str) -> str:
    if isinstance(value, bool):
        raise TypeError("cost_usd must be a Decimal, int or decimal string")
    if isinstance(value, float):
        # repr is the shortest text that reads back as this float; str(Decimal(x)) is not.
        return repr(value)
    if isinstance(value, Decimal | int | str):
        return str(value)
    raise TypeError("cost_usd must be a Decimal, int or decimal string")


def build_event(
    organization: str | int,
    model: str,
    usage: object,
    *,
    refresh_id: str | None,
    provider: str | None,
    timestamp: datetime | str | None,
    event_id: str | None,
    cost_usd: Decimal | int | float | str | None,
    reservation_id: str | None,
    metadata: Mapping[str, Any] | None,
    api_calls: int,
    service_tier: str | None = None,
) -> Event:
    """Validate what the client can, stamp id and time, and serialize once."""
    if isinstance(organization, bool) or not isinstance(organization, str | int):
        raise TypeError("organization must be a slug (str) or an id (int)")
    if not isinstance(model, str) or not model:
        raise TypeError("model must be a non-empty string")
    if provider is not None and (not isinstance(provider, str) or not provider):
        raise TypeError("provider must be a non-empty string")
    provider, fields = usage_body(usage, provider)
    if event_id is None:
        event_id = new_event_id(provider or "anthropic", metadata)
    elif not isinstance(event_id, str) or not 1 <= len(event_id) <= MAX_ID_LENGTH:
        raise ValueError(f"event_id must be a string of 1 to {MAX_ID_LENGTH} characters")
    if isinstance(api_calls, bool) or not isinstance(api_calls, int) or api_calls < 0:
        raise ValueError("api_calls must be a non-negative int")
    body: dict[str, Any] = {
        "id": event_id,
        "organization": organization,
        "timestamp": timestamp_text(timestamp),
        "model": model,
        **fields,
        "api_calls": api_calls,
    }
    if provider is not None:
        body["provider"] = provider
    if service_tier is not None:
        # the caller's word wins (e.g. "batch" for OpenAI's or Gemini's batch APIs)
        if not isinstance(service_tier, str) or not service_tier:
            raise TypeError("service_tier must be a non-empty string")
        body["service_tier"] = service_tier
    if refresh_id is not None:
        body["refresh_id"] = refresh_id
    if cost_usd is not None:
        body["cost_usd"] = _usd_text(cost_usd)
    if reservation_id is not None:
        body["reservation_id"] = reservation_id
    if metadata is not None:
        body["metadata"] = dict(metadata)
    # Serialized here, once: every retry and every replay sends these very bytes.
    line = json.dumps(body, separators=(",", ":"), allow_nan=False)
    return Event(id=event_id, line=line)
