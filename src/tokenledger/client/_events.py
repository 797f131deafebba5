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
    provider: str,
    timestamp: datetime | str | None,
    event_id: str | None,
    cost_usd: Decimal | int | float | str | None,
    reservation_id: str | None,
    metadata: Mapping[str, Any] | None,
    api_calls: int,
) -> Event:
    """Validate what the client can, stamp id and time, and serialize once."""
    if isinstance(organization, bool) or not isinstance(organization, str | int):
        raise TypeError("organization must be a slug (str) or an id (int)")
    if not isinstance(model, str) or not model:
        raise TypeError("model must be a non-empty string")
    if event_id is None:
        event_id = new_event_id(provider, metadata)
    elif not isinstance(event_id, str) or not 1 <= len(event_id) <= MAX_ID_LENGTH:
        raise ValueError(f"event_id must be a string of 1 to {MAX_ID_LENGTH} characters")
    if isinstance(api_calls, bool) or not isinstance(api_calls, int) or api_calls < 0:
        raise ValueError("api_calls must be a non-negative int")
    body: dict[str, Any] = {
        "id": event_id,
        "organization": organization,
        "timestamp": timestamp_text(timestamp),
        "provider": provider,
        "model": model,
        **usage_fields(usage),
        "api_calls": api_calls,
    }
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
