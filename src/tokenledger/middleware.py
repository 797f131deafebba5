"""HTTP rules that hold for every route: what a JSON body may be, and response headers.

Plain ASGI middleware (not BaseHTTPMiddleware), so streamed responses pass untouched.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenledger.errors import error_body
from tokenledger.headers import security_headers

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
INFLATING_ROUTE = "/v1/traces"
# Where StrictJson leaves the body it parsed, in the request's scope.
PARSED_JSON = "tokenledger.parsed_json"


class AmbiguousJson(ValueError):
    """A body that two JSON readers could understand differently."""


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                raise AmbiguousJson(f"duplicate key {key!r}")
            seen.add(key)
    return result


def _refuse_constant(name: str) -> Any:
    raise AmbiguousJson(f"{name} is not a JSON number")


def strict_json(body: bytes) -> Any:
    """The one JSON document in this body (UTF-8, unique keys, finite numbers, nesting the
    parser can follow); ValueError saying why it is not one."""
    try:
        return json.loads(
            body.decode("utf-8"),
            object_pairs_hook=_refuse_duplicate_keys,
            parse_constant=_refuse_constant,
        )
    except UnicodeDecodeError as exc:
        raise ValueError("the body is not UTF-8") from exc
    except AmbiguousJson as exc:
        raise ValueError(str(exc)) from exc
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc


def check_json(body: bytes) -> str | None:
    """Why this body is not one plain JSON document (strict_json's rules), or None."""
    try:
        strict_json(body)
    except ValueError as exc:
        return str(exc)
    return None


def _is_json(scope: Scope) -> bool:
    """A JSON body to check here. A compressed one sent to the OTLP route (exporters gzip
    theirs) is checked by that route once inflated (ledger/otlp.py, with check_json too);
    on every other route a compressed body is checked as it is, and so refused."""
    json_type = compressed = False
    for name, value in scope["headers"]:
        if name == b"content-type":
            media_type: bytes = value.split(b";", 1)[0].strip().lower()
            json_type = media_type == b"application/json" or media_type.endswith(b"+json")
        elif name == b"content-encoding":
            compressed = value.strip().lower() not in (b"", b"identity")
    if compressed and scope.get("path") == INFLATING_ROUTE:
        return False
    return json_type


class StrictJson:
    """422 for a JSON body with a duplicate key, NaN or Infinity, bad UTF-8 or too deep.

    Python's parser keeps the last of two equal keys; another reader may keep the
    first. A usage event billed differently by two readers of one body is refused here,
    once for every route, before FastAPI parses the body.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message]), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        problem = None
        if body:
            try:
                # Kept for routes that take it instead of parsing the body again.
                scope[PARSED_JSON] = strict_json(body)
            except ValueError as exc:
                problem = str(exc)
        if problem is not None:
            # The shape of every other payload error (errors.py's validation handler).
            details = [{"loc": ["body"], "msg": problem, "type": "json_invalid"}]
            body_error = error_body("validation_error", f"body: {problem}", details)
            response = JSONResponse(body_error, status_code=422)
            await response(scope, receive, send)
            return
        await self.app(scope, _replay([{"type": "http.request", "body": body}], receive), send)


class _ParsedJsonRequest(Request):
    async def json(self) -> Any:
        if PARSED_JSON in self.scope:
            return self.scope[PARSED_JSON]
        return await super().json()


class ParsedJsonRoute(APIRoute):
    """A route whose JSON body is read once: FastAPI gets the value StrictJson parsed
    (a 1000-event batch was parsed twice, about a tenth of its request time)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def parsed_json_handler(request: Request) -> Response:
            return await handler(_ParsedJsonRequest(request.scope, request.receive))

        return parsed_json_handler


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    async def receive() -> Message:
        if messages:
            return messages.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


class SecurityHeaders:
    """Adds security_headers() to every response that does not set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = [
            (name.encode(), value.encode())
            for name, value in security_headers(scope["path"]).items()
        ]

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _value in headers}
                headers += [(name, value) for name, value in extra if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
