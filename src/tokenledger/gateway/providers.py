"""What differs between the providers' APIs: addresses, keys, error shapes, and where each
answer (a JSON body or a stream of server-sent events) reports its id, model and usage."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final

from tokenledger.config import Settings

# Error types of each provider's shape, by status (the SDKs map them to their exceptions).
_ANTHROPIC_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
_OPENAI_TYPES: Final = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    402: "insufficient_quota",
    403: "invalid_request_error",
    404: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


@dataclass(frozen=True, slots=True)
class Provider:
    name: str  # the provider id of the events: "anthropic", "openai"

    def api_key(self, settings: Settings) -> str:
        secret = getattr(settings, f"{self.name}_api_key")
        return str(secret.get_secret_value())

    def base_url(self, settings: Settings) -> str:
        return str(getattr(settings, f"{self.name}_base_url")).rstrip("/")

    def auth_headers(self, key: str) -> dict[str, str]:
        if self.name == "anthropic":
            return {"x-api-key": key}
        return {"authorization": f"Bearer {key}"}

    def error_body(self, status: int, message: str, code: str | None = None) -> dict[str, Any]:
        """An error in the provider's own shape (what its SDK parses)."""
        if self.name == "anthropic":
            kind = _ANTHROPIC_TYPES.get(status, "api_error")
            return {"type": "error", "error": {"type": kind, "message": message}}
        kind = _OPENAI_TYPES.get(status, "server_error")
        if status == 402:
            code = "budget_exhausted"
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}


ANTHROPIC: Final = Provider("anthropic")
OPENAI: Final = Provider("openai")


@dataclass(slots=True)
class Outcome:
    """What an answer reported: its id, model, usage and service tier, and whether the
    usage is final (a stream that ended before its final usage event is not)."""

    response_id: str | None = None
    model: str | None = None
    usage: dict[str, Any] | None = None
    service_tier: str | None = None
    final: bool = False


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _object(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def read_body(api: str, body: Any) -> Outcome:
    """The outcome of a plain (not streamed) answer's JSON body."""
    data = _object(body) or {}
    usage = _object(data.get("usage"))
    tier = _text(data.get("service_tier")) if api != "anthropic" else None
    return Outcome(
        response_id=_text(data.get("id")),
        model=_text(data.get("model")),
        usage=dict(usage) if usage is not None else None,
        service_tier=tier,
        final=usage is not None,
    )


@dataclass(slots=True)
class StreamReader:
    """Reads a stream's events as they pass, keeping what they report.

    Anthropic: message_start has the id, model and the usage so far; each message_delta
    the cumulative usage (its fields replace those of message_start). OpenAI Chat: each
    chunk has the id; the usage chunk (stream_options.include_usage) the usage, and it is
    left out of what the client receives when the client did not ask for it. OpenAI
    Responses: response.created the id; response.completed (or .incomplete, .failed) the
    whole response with its usage.
    """

    api: str  # "anthropic", "openai-chat", "openai-responses"
    strip_usage_chunk: bool = False
    outcome: Outcome = field(default_factory=Outcome)

    def see(self, event: bytes) -> bool:
        """Read one event (its bytes, up to the blank line); False: not for the client."""
        if self.api == "anthropic":
            if b"message_start" in event or b"message_delta" in event:
                self._anthropic(_data(event))
            return True
        if self.api == "openai-chat":
            return self._chat(event)
        if b'"response.' in event:
            self._responses(_data(event))
        return True

    def _anthropic(self, data: dict[str, Any] | None) -> None:
        if data is None:
            return
        if data.get("type") == "message_start":
            message = _object(data.get("message")) or {}
            self.outcome.response_id = _text(message.get("id"))
            self.outcome.model = _text(message.get("model"))
            usage = _object(message.get("usage"))
            if usage is not None:
                self.outcome.usage = dict(usage)
        elif data.get("type") == "message_delta":
            usage = _object(data.get("usage"))
            if usage is not None:
                merged = dict(self.outcome.usage or {})
                # Cumulative counts; a null in the delta does not erase a reported count.
                merged.update({key: value for key, value in usage.items() if value is not None})
                self.outcome.usage = merged
                self.outcome.final = True

    def _chat(self, event: bytes) -> bool:
        if self.outcome.response_id is None or b'"usage":{' in event or b'"usage": {' in event:
            data = _data(event)
            if data is None:
                return True
            if self.outcome.response_id is None:
                self.outcome.response_id = _text(data.get("id"))
                self.outcome.model = _text(data.get("model"))
            tier = _text(data.get("service_tier"))
            if tier is not None:
                self.outcome.service_tier = tier
            usage = _object(data.get("usage"))
            if usage is not None:
                self.outcome.usage = dict(usage)
                self.outcome.final = True
                choices = data.get("choices")
                # The extra chunk the gateway asked for: no choices, only the usage.
                if self.strip_usage_chunk and not choices:
                    return False
        return True

    def _responses(self, data: dict[str, Any] | None) -> None:
        if data is None:
            return
        kind = data.get("type")
        response = _object(data.get("response"))
        if response is None:
            return
        if kind == "response.created" or self.outcome.response_id is None:
            self.outcome.response_id = _text(response.get("id"))
            self.outcome.model = _text(response.get("model"))
        if kind in ("response.completed", "response.incomplete", "response.failed"):
            usage = _object(response.get("usage"))
            tier = _text(response.get("service_tier"))
            if tier is not None:
                self.outcome.service_tier = tier
            if usage is not None:
                self.outcome.usage = dict(usage)
                self.outcome.final = True


def _data(event: bytes) -> dict[str, Any] | None:
    """The JSON object of an event's data lines, None when there is none."""
    lines = [
        line[5:].lstrip(b" ")
        for line in event.replace(b"\r\n", b"\n").split(b"\n")
        if line.startswith(b"data:")
    ]
    if not lines:
        return None
    payload = b"\n".join(lines)
    if payload.strip() == b"[DONE]":
        return None
    try:
        value = json.loads(payload)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class EventSplitter:
    """Cuts a byte stream into server-sent events, each with its terminating blank line."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buffer += chunk
        events: list[bytes] = []
        while True:
            cut = _boundary(self._buffer)
            if cut < 0:
                return events
            events.append(self._buffer[:cut])
            self._buffer = self._buffer[cut:]

    def rest(self) -> bytes:
        rest, self._buffer = self._buffer, b""
        return rest


def _boundary(buffer: bytes) -> int:
    """The end of the first whole event (after its blank line), or -1."""
    ends = [
        found + len(separator)
        for separator in (b"\n\n", b"\r\n\r\n", b"\r\r")
        if (found := buffer.find(separator)) >= 0
    ]
    return min(ends) if ends else -1
