"""The gateway's routes: the Anthropic Messages API and the OpenAI Chat Completions and
Responses APIs, wire-compatible, each call held before it is forwarded and metered after."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from tokenledger.config import Settings
from tokenledger.deps import bearer_token, get_hot, key_principal, now_of
from tokenledger.errors import DomainError
from tokenledger.gateway import metering
from tokenledger.gateway.bounds import hold_nano, request_bound
from tokenledger.gateway.providers import ANTHROPIC, OPENAI, Provider, StreamReader, read_body
from tokenledger.gateway.proxy import (
    Relay,
    RelayResponse,
    Timing,
    Upstream,
    client_headers,
    record,
    upstream_headers,
)
from tokenledger.middleware import PARSED_JSON, SecurityHeaders, StrictJson
from tokenledger.ops import BodyLimit, MeasureRequests, Metrics
from tokenledger.organizations import refs
from tokenledger.schemas import PRINTABLE
from tokenledger.usage.schemas import MAX_METADATA_BYTES

log = logging.getLogger("tokenledger.gateway")

router = APIRouter(prefix="/gateway", tags=["gateway"], include_in_schema=False)

ORGANIZATION_HEADER = "tokenledger-organization"
REFRESH_HEADER = "tokenledger-refresh-id"
METADATA_HEADER = "tokenledger-metadata"
PRINTABLE_TEXT = re.compile(PRINTABLE)


def upstream_of(app: FastAPI) -> Upstream:
    found: Upstream | None = getattr(app.state, "gateway_upstream", None)
    if found is None:
        found = app.state.gateway_upstream = Upstream(app.state.settings)
    return found


def _ledger(request: Request) -> metering.Ledger:
    state = request.app.state
    return metering.Ledger(state.database, state.settings, get_hot(request), state.usage_writer)


def _error(provider: Provider, status: int, message: str, headers: Any = None) -> JSONResponse:
    return JSONResponse(provider.error_body(status, message), status, headers=headers)


def _optional_headers(request: Request) -> tuple[str | None, dict[str, Any] | None]:
    refresh_id = request.headers.get(REFRESH_HEADER)
    if refresh_id is not None:
        refresh_id = refresh_id.strip()
        if not 1 <= len(refresh_id) <= 128 or not PRINTABLE_TEXT.match(refresh_id):
            raise DomainError(400, "invalid_header", f"{REFRESH_HEADER}: 1 to 128 characters")
    metadata = None
    raw = request.headers.get(METADATA_HEADER)
    if raw is not None:
        try:
            metadata = json.loads(raw)
        except ValueError:
            metadata = None
        if not isinstance(metadata, dict) or len(raw.encode()) > MAX_METADATA_BYTES:
            raise DomainError(
                400,
                "invalid_header",
                f"{METADATA_HEADER}: a JSON object of at most {MAX_METADATA_BYTES} bytes",
            )
    return refresh_id or None, metadata


def _body(request: Request, raw: bytes) -> dict[str, Any]:
    body = request.scope.get(PARSED_JSON)
    if body is None:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
    if not isinstance(body, dict):
        raise DomainError(400, "invalid_request", "the body must be a JSON object")
    return body


async def forward(request: Request, provider: Provider, api: str, path: str) -> Response:
    """Hold, forward, answer, record: one call (api None: passed through, not metered)."""
    timing = Timing(started=time.perf_counter())
    app = request.app
    settings = app.state.settings
    metrics: Metrics = app.state.metrics
    ledger = _ledger(request)
    now = now_of(request)
    metered = api != "count_tokens"
    call: metering.Call | None = None
    try:
        secret = request.headers.get("x-api-key", "").strip() or bearer_token(request)
        key = await key_principal(request, secret, now)
        org = refs.for_key(
            ledger.hot.organizations, key.organization_id, request.headers.get(ORGANIZATION_HEADER)
        )
        refresh_id, metadata = _optional_headers(request)
        provider_key = provider.api_key(settings)
        if not provider_key:
            raise DomainError(503, "provider_not_configured", f"no {provider.name} key is set")
        raw = await request.body()
        body = _body(request, raw)
        model = body.get("model")
        if not isinstance(model, str) or not model or len(model) > 128:
            raise DomainError(400, "invalid_request", "model: required")
        stream = body.get("stream") is True
        strip_usage = False
        if stream and api == "openai-chat":
            options = body.get("stream_options")
            if not (isinstance(options, dict) and options.get("include_usage") is True):
                # Usage comes only with include_usage: asked for, and its chunk kept back.
                body["stream_options"] = {**(options or {}), "include_usage": True}
                raw = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
                strip_usage = True
        if metered:
            book = ledger.hot.price_book()
            bound = request_bound(api, body, len(raw))
            speed = body.get("speed") if isinstance(body.get("speed"), str) else None
            long_context = "context-1m" in request.headers.get("anthropic-beta", "")
            amount = hold_nano(book, provider.name, model, bound, now, speed, long_context)
            hold_id = await metering.hold(ledger, org.id, provider.name, model, amount, now)
            call = metering.Call(
                organization_id=org.id,
                organization_slug=org.slug,
                provider=provider.name,
                model=model,
                hold_id=hold_id,
                held_nano=amount or 0,
                refresh_id=refresh_id,
                metadata=metadata,
                touch_key_id=key.key_id if key.touch_due else None,
            )
    except DomainError as exc:
        metrics.gateway_requests.labels(provider.name, str(exc.status)).inc()
        return _error(provider, exc.status, exc.message, exc.headers)

    url = provider.base_url(settings) + path
    query = request.scope.get("query_string", b"")
    if query:
        url += "?" + query.decode("latin-1")
    upstream = upstream_of(app)
    timing.sent = time.perf_counter()
    try:
        response = await upstream.send(
            url, upstream_headers(request.headers, provider, provider_key), raw
        )
    except (aiohttp.ClientError, TimeoutError) as exc:
        timing.answered = time.perf_counter()
        log.warning("%s call failed: %s", provider.name, type(exc).__name__)
        if call is not None:
            await metering.release(ledger, call)
        timeout = isinstance(exc, TimeoutError)
        status = 504 if timeout else 502
        metrics.gateway_requests.labels(provider.name, str(status)).inc()
        message = f"{provider.name} " + ("did not answer in time" if timeout else "unreachable")
        return _error(provider, status, message)
    timing.answered = time.perf_counter()
    metrics.gateway_upstream_seconds.labels(provider.name).observe(timing.upstream())
    metrics.gateway_requests.labels(provider.name, str(response.status)).inc()
    headers = client_headers(response.raw_headers)
    is_stream = response.headers.get("content-type", "").startswith("text/event-stream")
    if call is not None and response.status == 200 and is_stream:
        reader = StreamReader("anthropic" if api == "anthropic" else api, strip_usage)
        relay = Relay(
            provider=provider,
            api=api,
            response=response,
            reader=reader,
            ledger=ledger,
            call=call,
            clock=app.state.clock,
            metrics=metrics,
            timing=timing,
            deadline=time.monotonic() + settings.gateway_max_call_seconds,
        )
        task = asyncio.create_task(relay.pump())
        upstream.tasks.add(task)
        task.add_done_callback(upstream.tasks.discard)
        return RelayResponse(relay, headers)
    content: bytes | None
    try:
        content = await response.read()
    except (aiohttp.ClientError, TimeoutError):
        content = None
    finally:
        response.release()
    if call is not None:
        if response.status == 200 and content is not None:
            try:
                parsed = json.loads(content)
            except ValueError:
                parsed = None
            outcome = read_body(api, parsed)
            await record(ledger, call, outcome, outcome.final, now_of(request))
        else:
            # Refused by the provider (or its answer was lost): not charged, hold released.
            await metering.release(ledger, call)
    if content is None:
        return _error(provider, 502, f"{provider.name}'s answer broke off")
    answer = Response(content=content, status_code=response.status)
    answer.raw_headers = [*headers, (b"content-length", str(len(content)).encode())]
    metrics.gateway_overhead_seconds.labels(provider.name).observe(
        (time.perf_counter() - timing.started) - timing.upstream()
    )
    return answer


# The gateway's routes: their path here, and what each forwards to (provider, API, the
# provider's path). "count_tokens" is passed through, not metered.
ROUTES: Final = {
    "/gateway/anthropic/v1/messages": (ANTHROPIC, "anthropic", "/v1/messages"),
    "/gateway/anthropic/v1/messages/count_tokens": (
        ANTHROPIC,
        "count_tokens",
        "/v1/messages/count_tokens",
    ),
    "/gateway/openai/v1/chat/completions": (OPENAI, "openai-chat", "/chat/completions"),
    "/gateway/openai/v1/responses": (OPENAI, "openai-responses", "/responses"),
}


async def _route(request: Request) -> Response:
    return await forward(request, *ROUTES[request.url.path])


# In the app's route table (what the route guard test and the OpenAPI walk read, and
# what answers other methods with 405); GatewayRoutes serves their POSTs.
for _path in ROUTES:
    router.add_api_route(_path.removeprefix("/gateway"), _route, methods=["POST"])


@dataclass(frozen=True, slots=True)
class _Template:
    path: str  # what MeasureRequests labels a request with (a route's path template)


class GatewayRoutes:
    """The gateway's routes, served ahead of the app's stack.

    A call through the gateway costs its own work twice over in the general stack: the
    router tries every route of the app before these, and FastAPI's exception and
    dependency layers wrap each call. Here a POST to one of ROUTES goes through only the
    layers it needs, the app's own classes in the app's order (security headers, metrics,
    the body cap, the strict JSON check), to `forward`; everything else goes on to the app.
    """

    def __init__(self, app: ASGIApp, settings: Settings, metrics: Metrics) -> None:
        self.app = app
        self.served = SecurityHeaders(
            MeasureRequests(BodyLimit(StrictJson(self._call), settings.max_body_bytes), metrics)
        )
        self.templates = {path: _Template(path) for path in ROUTES}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in ROUTES:
            scope["route"] = self.templates[scope["path"]]
            await self.served(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _call(self, scope: Scope, receive: Receive, send: Send) -> None:
        provider, api, path = ROUTES[scope["path"]]
        request = Request(scope, receive)
        try:
            response = await forward(request, provider, api, path)
        except Exception:
            # What the app's error layer would do, in the provider's shape.
            log.exception("gateway call failed")
            response = _error(provider, 500, "internal error")
        await response(scope, receive, send)
