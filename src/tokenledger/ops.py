"""Operations: liveness, readiness, Prometheus metrics, and the request body cap."""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Iterator

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenledger.alerts.models import WebhookDelivery
from tokenledger.db import Database, utcnow
from tokenledger.deps import get_database, get_settings
from tokenledger.errors import DomainError, error_body
from tokenledger.migrations.runner import is_migrated

router = APIRouter(tags=["operations"])


class Metrics:
    """One registry per app, so that several apps in one process do not collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tokenledger_http_requests",
            "HTTP requests by method, route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tokenledger_http_request_duration_seconds",
            "HTTP request latency by method and route.",
            ["method", "route"],
            registry=self.registry,
        )
        self.db_errors = Counter(
            "tokenledger_database_errors",
            "Database errors seen while serving requests.",
            registry=self.registry,
        )
        self.events = Counter(
            "tokenledger_usage_events",
            "Usage events received, by outcome (created, duplicate).",
            ["status"],
            registry=self.registry,
        )
        self.gateway_requests = Counter(
            "tokenledger_gateway_requests",
            "Calls through the gateway by provider and the status answered.",
            ["provider", "status"],
            registry=self.registry,
        )
        self.gateway_upstream_seconds = Histogram(
            "tokenledger_gateway_upstream_seconds",
            "Time the provider took to answer a gateway call (streams: to the answer's start).",
            ["provider"],
            registry=self.registry,
        )
        self.gateway_overhead_seconds = Histogram(
            "tokenledger_gateway_overhead_seconds",
            "The gateway's own time per call: before forwarding (key, hold) and after the "
            "provider's answer (the usage event's commit).",
            ["provider"],
            buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
            registry=self.registry,
        )
        self.usage_group_requests = Histogram(
            "tokenledger_usage_group_requests",
            "Ingest requests written per group commit.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )

    # What the usage writer reports (ledger.writer.WriterMetrics).
    def usage_group_written(self, requests: int) -> None:
        self.usage_group_requests.observe(requests)

    def usage_events_stored(self, created: int, duplicates: int) -> None:
        """The events a stored batch created, and the duplicates it skipped."""
        self.events.labels("created").inc(created)
        self.events.labels("duplicate").inc(duplicates)


def install_metrics(app: FastAPI, metrics: Metrics) -> None:
    app.add_middleware(MeasureRequests, metrics=metrics)


class MeasureRequests:
    """Counts and times every request by route template and status.

    Plain ASGI, not BaseHTTPMiddleware: that one relays a streamed body through a queue
    and ends it cleanly when the app fails mid-stream, so a broken export looked whole.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        except SQLAlchemyError:
            self.metrics.db_errors.inc()
            raise
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            method = scope["method"]
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - started)


@router.get("/healthz", include_in_schema=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", include_in_schema=False)
def readyz(request: Request) -> JSONResponse:
    database = get_database(request)
    try:
        # Reading the schema's revision also proves the database reachable.
        migrated = is_migrated(database.engine)
    except SQLAlchemyError:
        request.app.state.metrics.db_errors.inc()
        return JSONResponse(error_body("database_unreachable", "database unreachable"), 503)
    if not migrated:
        return JSONResponse(error_body("not_migrated", "run `tokenledger migrate`"), 503)
    return JSONResponse({"status": "ready"})


class OutboxCollector(Collector):
    """Webhook outbox gauges, read from the database at scrape time (so every worker agrees)."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def collect(self) -> Iterator[Metric]:
        with self.database.session(write=False) as session:
            pending, oldest = session.execute(
                select(func.count(), func.min(WebhookDelivery.created_at)).where(
                    WebhookDelivery.status == "pending"
                )
            ).one()
            failed = session.scalar(select(func.count()).where(WebhookDelivery.status == "failed"))
        age = max(0.0, (utcnow() - oldest).total_seconds()) if oldest is not None else 0.0
        yield GaugeMetricFamily(
            "tokenledger_webhook_outbox_pending",
            "Webhook deliveries not yet delivered (nor given up).",
            value=pending,
        )
        yield GaugeMetricFamily(
            "tokenledger_webhook_outbox_oldest_pending_age_seconds",
            "Age of the oldest pending webhook delivery; 0 when none is pending.",
            value=age,
        )
        yield GaugeMetricFamily(
            "tokenledger_webhook_deliveries_failed",
            "Webhook deliveries given up after a day of failures.",
            value=failed or 0,
        )


def multiprocess_directory() -> str | None:
    """Set by `tokenledger serve` with several workers: metrics are then summed over them."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> PlainTextResponse:
    token = get_settings(request).metrics_token
    if token and not _bearer_is(request, token):
        raise DomainError(
            401, "not_authenticated", "metrics need a token", headers={"WWW-Authenticate": "Bearer"}
        )
    if multiprocess_directory():
        # Every worker writes its figures to files there; a scrape adds them all up.
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = request.app.state.metrics.registry
    body = generate_latest(registry)
    outbox = CollectorRegistry()
    outbox.register(OutboxCollector(get_database(request)))
    try:
        body += generate_latest(outbox)
    except SQLAlchemyError:
        request.app.state.metrics.db_errors.inc()
    return PlainTextResponse(body, media_type=CONTENT_TYPE_LATEST)


def _bearer_is(request: Request, token: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # Constant time, as bytes (compare_digest refuses non-ASCII text).
    return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), token.encode())


class BodyLimit:
    """413 for request bodies larger than the limit, whether declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send)
            return
        seen = 0
        too_large = False
        rejected = False

        # Past the limit the app reads a disconnect, and whatever it answers (FastAPI: a
        # 400) is replaced by the 413. Raising from receive() instead would not work: a
        # BaseHTTPMiddleware in between wraps the error in an ExceptionGroup.
        async def limited() -> Message:
            nonlocal seen, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def replaced(message: Message) -> None:
            nonlocal rejected
            if not too_large:
                await send(message)
            elif message["type"] == "http.response.start" and not rejected:
                rejected = True
                await self._reject(send)

        try:
            await self.app(scope, limited, replaced)
        except Exception:
            if not too_large or rejected:
                raise
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        response = JSONResponse(
            error_body("body_too_large", f"request body over {self.max_bytes} bytes"), 413
        )
        await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
