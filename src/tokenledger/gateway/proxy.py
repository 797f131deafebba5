"""Forwarding: the caller's request to the provider, and its answer back, streamed as it
arrives. A stream is read from the provider by a task of its own, so that a client that
goes away does not end the call unseen: the task reads on to the end (bounded by the idle
timeout and the longest call) and records the usage.

The provider is called with aiohttp (its C parser, and a connection pool that costs the
same however many connections it keeps): httpx was a third of the gateway's CPU per call
at 64 connections, half of that httpcore checking every pooled connection for expiry on
each request. The session
keeps no cookies (a provider's cookie must not pass from one tenant's call to another's)
and decompresses nothing: bodies pass as they come.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from yarl import URL

from tokenledger.config import Settings
from tokenledger.db import Clock
from tokenledger.errors import DomainError
from tokenledger.gateway import metering
from tokenledger.gateway.providers import EventSplitter, Outcome, Provider, StreamReader
from tokenledger.ops import Metrics

log = logging.getLogger("tokenledger.gateway")

# Headers that are the connection's, the caller's key, or tokenledger's own: never forwarded.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED = _HOP_BY_HOP | {
    "host",
    "content-length",
    "authorization",
    "x-api-key",
    "cookie",
    # The answer is read here (usage): asked for as it is, never compressed.
    "accept-encoding",
    "expect",
}
_NOT_RETURNED = _HOP_BY_HOP | {"content-length", "content-encoding"}
_END = object()
_BROKEN = object()


class UpstreamBroke(Exception):
    """The provider's stream broke off: the client's is broken off too."""


def upstream_headers(headers: Mapping[str, str], provider: Provider, key: str) -> dict[str, str]:
    forwarded = {
        name: value
        for name, value in headers.items()
        if name not in _NOT_FORWARDED and not name.startswith("tokenledger-")
    }
    forwarded["accept-encoding"] = "identity"
    forwarded.update(provider.auth_headers(key))
    return forwarded


def client_headers(raw: Any) -> list[tuple[bytes, bytes]]:
    """The provider's response headers for the client, as received (names lowercased)."""
    kept = []
    for name, value in raw:
        lowered = name.lower()
        if lowered.decode("latin-1") not in _NOT_RETURNED:
            kept.append((lowered, value))
    return kept


class Upstream:
    """The app's HTTP client to the providers (one per event loop), and its stream tasks."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def client(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
                timeout=self.timeout(),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                # Only what the caller sent (and Host, Content-Length): nothing of aiohttp's.
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                trust_env=False,
            )
            self._loop = loop
        return self._client

    def timeout(self) -> aiohttp.ClientTimeout:
        settings = self.settings
        # sock_read: the wait for the answer's first byte, and for each read after it (a
        # stream's events are also bounded by the idle timeout, Relay.pump).
        return aiohttp.ClientTimeout(
            total=None,
            connect=settings.gateway_connect_timeout,
            sock_connect=settings.gateway_connect_timeout,
            sock_read=settings.gateway_first_byte_timeout,
        )

    async def send(self, url: str, headers: dict[str, str], body: bytes) -> aiohttp.ClientResponse:
        """POST the body; the response once its head has arrived (its body not yet read).
        Redirects are the caller's to follow; the URL's query passes as it was given."""
        return await self.client().request(
            "POST", URL(url, encoded=True), data=body, headers=headers, allow_redirects=False
        )

    async def close(self) -> None:
        """At shutdown: let the streams still being read finish (bounded), then close."""
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=self.settings.gateway_idle_timeout)
        if self._client is not None:
            await self._client.close()
            self._client = None


@dataclass(slots=True)
class Timing:
    started: float
    sent: float = 0.0
    answered: float = 0.0

    def upstream(self) -> float:
        return self.answered - self.sent


@dataclass(slots=True)
class Relay:
    """One stream: the task that reads the provider's events, and the client's queue."""

    provider: Provider
    api: str
    response: aiohttp.ClientResponse
    reader: StreamReader
    ledger: metering.Ledger
    call: metering.Call
    clock: Clock
    metrics: Metrics
    timing: Timing
    deadline: float  # time.monotonic() by which the call ends
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    client_gone: bool = False
    held_back: list[bytes] = field(default_factory=list)

    def _put(self, item: Any) -> None:
        if not self.client_gone:
            self.queue.put_nowait(item)

    async def pump(self) -> None:
        splitter = EventSplitter()
        idle = self.ledger.settings.gateway_idle_timeout
        complete = False
        broken = False
        try:
            chunks = self.response.content.iter_any().__aiter__()
            while True:
                wait = min(idle, self.deadline - time.monotonic())
                try:
                    async with asyncio.timeout(max(0.0, wait)):
                        chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                if self._forward(splitter.feed(chunk)):
                    # The client's side runs now, not once this read runs dry: events that
                    # came in together would otherwise all be parsed (and, at the end, the
                    # usage recorded) before the first of them leaves.
                    await asyncio.sleep(0)
            rest = splitter.rest()
            if rest.strip():
                self._forward([rest])
            complete = self.reader.outcome.final
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("%s stream broke: %s", self.provider.name, type(exc).__name__)
            broken = True
        except BaseException:
            self._release_held_back()
            self._put(_END)
            raise
        finally:
            self.response.release()
        finished = time.perf_counter()
        try:
            await record(self.ledger, self.call, self.reader.outcome, complete, self.clock())
        finally:
            self.metrics.gateway_overhead_seconds.labels(self.provider.name).observe(
                (self.timing.sent - self.timing.started) + (time.perf_counter() - finished)
            )
            self._release_held_back()
            self._put(_BROKEN if broken else _END)

    def _forward(self, events: list[bytes]) -> bool:
        """Forward events at once (those of one read from the provider in one write to the
        client: they arrived together); from the final usage on, only once it is recorded:
        a client that has the stream's last event finds the call in the ledger. True when
        something was handed to the client."""
        ready = []
        for event in events:
            if not self.reader.see(event):
                continue
            if self.reader.outcome.final:
                self.held_back.append(event)
            else:
                ready.append(event)
        if ready:
            self._put(b"".join(ready))
        return bool(ready)

    def _release_held_back(self) -> None:
        if self.held_back:
            self._put(b"".join(self.held_back))
            self.held_back.clear()


class RelayResponse(Response):
    """The client's side of a stream: each batch of events sent as the pump hands it over.

    Starlette's StreamingResponse would run a task group per stream (a task that listens
    for the client's disconnect beside one that iterates a generator): two tasks and a
    generator's hand-overs per event batch, on the way of the first event. Here one
    coroutine sends what the queue gives. A client gone away needs no listener: the ASGI
    server drops what is sent to it, and the pump reads the provider to the end anyway.
    """

    def __init__(self, relay: Relay, headers: list[tuple[bytes, bytes]]) -> None:
        super().__init__(status_code=200)
        self.relay = relay
        self.raw_headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        relay = self.relay
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            while (item := await relay.queue.get()) is not _END:
                if item is _BROKEN:
                    raise UpstreamBroke("the provider's stream broke off")
                await send({"type": "http.response.body", "body": item, "more_body": True})
        finally:
            # Ended early (a send failed, the app is stopping) or at the end: the pump goes
            # on alone, and queues nothing more.
            relay.client_gone = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def record(
    ledger: metering.Ledger, call: metering.Call, outcome: Outcome, complete: bool, now: datetime
) -> None:
    """The call's usage event; usage the ledger cannot read is recorded at the hold, for
    review. Should even that fail, the hold stays and is listed as an interrupted call."""
    try:
        await metering.record(
            ledger,
            call,
            response_id=outcome.response_id,
            model=outcome.model,
            usage=outcome.usage,
            service_tier=outcome.service_tier,
            complete=complete,
            now=now,
        )
        return
    except DomainError as exc:
        if exc.code == "idempotency_conflict" or outcome.usage is None:
            log.error("gateway call %s not recorded: %s", call.hold_id, exc.message)
            return
        log.error("gateway call %s: usage not read (%s); recorded at its hold", call.hold_id, exc)
    except Exception:
        log.exception("gateway call %s not recorded; its hold stays", call.hold_id)
        return
    try:
        await metering.record(
            ledger,
            call,
            response_id=outcome.response_id,
            model=outcome.model,
            usage=None,
            service_tier=None,
            complete=False,
            now=now,
        )
    except Exception:
        log.exception("gateway call %s not recorded; its hold stays", call.hold_id)
