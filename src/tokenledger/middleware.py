"""HTTP rules that hold for every route: what a JSON or form body and a query may be
(no NUL anywhere: PostgreSQL cannot store it), and response headers.

Plain ASGI middleware (not BaseHTTPMiddleware), so streamed responses pass untouched.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenledger.db import RETRY_ATTEMPTS, is_retryable, retry_pause
from tokenledger.errors import error_body
from tokenledger.headers import NO_STORE, PORTAL_PREFIX, portal_headers, security_headers

log = logging.getLogger("tokenledger.http")

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
INFLATING_ROUTE = "/v1/traces"
# Routes whose request may have had effects outside the database (a provider's call).
NOT_RETRIED_PREFIX = "/gateway/"
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


NUL_MESSAGE = "text must not contain NUL (U+0000)"


def _nul_at(value: Any, path: str = "") -> str | None:
    """Where the first NUL in a JSON document is (events[1].id), or None."""
    if isinstance(value, str):
        return path or "body" if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if "\x00" in key:
                return where
            found = _nul_at(item, where)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _nul_at(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def strict_json(body: bytes, *, allow_nul: bool = False) -> Any:
    """The one JSON document in this body (UTF-8, unique keys, finite numbers, nesting the
    parser can follow, no NUL in any text unless allowed); ValueError saying why not."""
    try:
        document = json.loads(
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
    # JSON can only say NUL as the escape \u0000 (a raw control character in a string is
    # invalid): one search of the bytes, and a walk of the document only when it is there
    # (it may be an escaped backslash before "u0000").
    if not allow_nul and b"\\u0000" in body and (where := _nul_at(document)) is not None:
        raise ValueError(f"{where!r}: {NUL_MESSAGE}")
    return document


def _form_nul(body: bytes) -> bool:
    """Whether a URL-encoded form (or a query string) says NUL: %00 or the byte itself."""
    return b"%00" in body or b"\x00" in body


def check_json(body: bytes, *, allow_nul: bool = False) -> str | None:
    """Why this body is not one plain JSON document (strict_json's rules), or None."""
    try:
        strict_json(body, allow_nul=allow_nul)
    except ValueError as exc:
        return str(exc)
    return None


def _body_kind(scope: Scope) -> str | None:
    """ "json" or "form" for a body to check here, else None. The OTLP route checks its own
    (ledger/otlp.py, with check_json too), once inflated (exporters gzip theirs), and
    answers in OTLP's error shape; on every other route a compressed body is checked as
    it is, and so refused."""
    if scope.get("path") == INFLATING_ROUTE:
        return None
    kind: str | None = None
    for name, value in scope["headers"]:
        if name == b"content-type":
            media_type: bytes = value.split(b";", 1)[0].strip().lower()
            if media_type == b"application/json" or media_type.endswith(b"+json"):
                kind = "json"
            elif media_type == b"application/x-www-form-urlencoded":
                kind = "form"
            else:
                kind = None
    return kind


def _refusal(where: str, problem: str) -> JSONResponse:
    # The shape of every other payload error (errors.py's validation handler).
    details = [{"loc": [where], "msg": problem, "type": "json_invalid"}]
    return JSONResponse(error_body("validation_error", f"{where}: {problem}", details), 422)


class StrictJson:
    """422 for a JSON body with a duplicate key, NaN or Infinity, bad UTF-8, too deep or
    with NUL in a text; and for a form or a query string that holds NUL.

    Python's parser keeps the last of two equal keys; another reader may keep the
    first. A usage event billed differently by two readers of one body is refused here,
    once for every route, before FastAPI parses the body. NUL is refused here once for
    every text a caller sends (the login form's username included): no column of either
    database may hold it, and PostgreSQL refuses it with an error.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _form_nul(scope.get("query_string", b"")):
            await _refusal("query", NUL_MESSAGE)(scope, receive, send)
            return
        kind = _body_kind(scope) if scope["method"] in _BODY_METHODS else None
        if kind is None:
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
        if kind == "form":
            problem = NUL_MESSAGE if _form_nul(body) else None
        elif body:
            try:
                # Kept for routes that take it instead of parsing the body again.
                scope[PARSED_JSON] = strict_json(body)
            except ValueError as exc:
                problem = str(exc)
        if problem is not None:
            await _refusal("body", problem)(scope, receive, send)
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


class RetryConflicts:
    """A request whose transaction lost a deadlock or serialization conflict (PostgreSQL,
    SQLSTATE 40P01 / 40001) is served again from the start, a few times after a random
    pause, instead of answering 500: its transaction was rolled back whole, so nothing of
    it is stored. The body is kept to be read again (BodyLimit bounds it). Not once the
    answer has begun, and never the gateway's routes, which have called a provider.
    """

    def __init__(self, app: ASGIApp, attempts: int = RETRY_ATTEMPTS) -> None:
        self.app = app
        self.attempts = attempts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(NOT_RETRIED_PREFIX):
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        started = False

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        for attempt in range(self.attempts):
            try:
                await self.app(scope, _replay(list(messages), receive), watched_send)
                return
            except Exception as exc:
                if started or attempt + 1 >= self.attempts or not is_retryable(exc):
                    raise
                log.info("%s %s lost a lock conflict; served again", scope["method"], scope["path"])
            await asyncio.sleep(retry_pause(attempt))


class SecurityHeaders:
    """Adds security_headers() to every response that does not set them itself."""

    def __init__(self, app: ASGIApp, portal_frame_origins: list[str] | None = None) -> None:
        self.app = app
        self.portal = [
            (name.encode(), value.encode())
            for name, value in {
                **portal_headers(portal_frame_origins or []),
                **NO_STORE,
            }.items()
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"].startswith(PORTAL_PREFIX):
            extra = self.portal
        else:
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
