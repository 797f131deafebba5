"""The ASGI application: API, operations and the admin UI on one server."""

from __future__ import annotations

import functools
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from tokenledger.alerts.api import router as alerts_router
from tokenledger.alerts.webhooks import WebhookWorker
from tokenledger.apidocs import install_docs
from tokenledger.audit.api import router as audit_router
from tokenledger.auth.api import router as auth_router
from tokenledger.budgets.api import admin_router as budget_admin_router
from tokenledger.budgets.api import router as budgets_router
from tokenledger.config import Settings, get_settings
from tokenledger.db import Clock, Database, utcnow
from tokenledger.errors import install_error_handlers
from tokenledger.gateway.admin import router as gateway_admin_router
from tokenledger.gateway.api import GatewayRoutes, upstream_of
from tokenledger.gateway.api import router as gateway_router
from tokenledger.hot import HotReads
from tokenledger.ledger.api import router as usage_router
from tokenledger.ledger.otlp import router as otlp_router
from tokenledger.ledger.writer import UsageWriter
from tokenledger.licenses.api import router as licenses_router
from tokenledger.middleware import RetryConflicts, SecurityHeaders, StrictJson
from tokenledger.openapi import install_openapi
from tokenledger.ops import BodyLimit, Metrics, install_metrics
from tokenledger.ops import router as ops_router
from tokenledger.organizations.api import router as organizations_router
from tokenledger.portal.api import router as portal_router
from tokenledger.pricing.api import router as pricing_router
from tokenledger.provider_reports.api import router as provider_reports_router
from tokenledger.provider_reports.worker import ProviderSyncWorker
from tokenledger.ratelimit import Rate, RateLimiter
from tokenledger.usage.admin_api import router as token_usage_router
from tokenledger.usage.tenant_api import router as tenant_router
from tokenledger.web import install as install_web

log = logging.getLogger("tokenledger")

# How tokenledger's own commands run uvicorn: its proxy-header handling trusts 127.0.0.1
# by default, so it is off; the app believes forwarded headers from
# TOKENLEDGER_TRUSTED_PROXIES only.
UVICORN_OPTIONS: dict[str, Any] = {"proxy_headers": False, "server_header": False}


@functools.cache  # once per process (tests start many apps)
def settle_heap() -> None:
    """Load the bundled price data now, then put every object alive at startup (modules,
    the price data) out of the garbage collector's reach.

    A full collection otherwise walks them all: on this stack a stall of 100 to 150 ms
    every few thousand requests, which was most of the p99 of every route.
    """
    import genai_prices.data  # noqa: F401  (a large module, otherwise loaded at first use)

    gc.collect()
    gc.freeze()


def create_app(settings: Settings | None = None, *, clock: Clock = utcnow) -> FastAPI:
    """The app; clock gives every route and page its "now" (deps.Now), aware and in UTC."""
    settings = settings or get_settings()
    database = Database(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        settle_heap()
        app.state.hot.start_refreshing()
        worker = None
        if settings.webhook_worker:
            worker = WebhookWorker(
                database,
                settings.webhooks_allow_private,
                lease_seconds=settings.webhook_lease_seconds,
            )
            worker.start()
        provider_sync = None
        if settings.provider_sync_interval_minutes:
            provider_sync = ProviderSyncWorker(database, settings)
            provider_sync.start()
        yield
        if provider_sync is not None:
            provider_sync.stop()
        if worker is not None:
            worker.stop()
        await upstream_of(app).close()
        app.state.hot.stop_refreshing()
        app.state.usage_writer.stop()
        database.dispose()

    openapi_url = "/openapi.json" if settings.docs else None
    app = FastAPI(
        title="tokenledger",
        version="0.1.0",
        lifespan=lifespan,
        openapi_url=openapi_url,
        docs_url=None,  # served by apidocs, offline and under the CSP
        redoc_url=None,
        # Off: tokenledger's own figures are /metrics. FastAPI's native OpenTelemetry
        # asked three global providers (and os.environ) on every request whether it was
        # configured: about 5 % of a budget check's time.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    if openapi_url is not None:
        install_docs(app, openapi_url)
    app.state.settings = settings
    app.state.database = database
    app.state.clock = clock
    app.state.metrics = Metrics()
    app.state.hot = HotReads(database, settings.cache_seconds)
    app.state.usage_writer = UsageWriter(database, settings, app.state.metrics, clock)
    rate = settings.ingest_rate_limit
    # The buckets refill by the real monotonic clock, not the app's: a rate is real time.
    app.state.ingest_limiter = RateLimiter(Rate.parse(rate)) if rate else None
    install_error_handlers(app)
    # Innermost: a request that lost a lock conflict is served again from its route.
    app.add_middleware(RetryConflicts)
    app.add_middleware(StrictJson)  # inside the body cap: it reads whole bodies
    # Added first, so it runs inside the metrics middleware: 413s are counted too.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    install_metrics(app, app.state.metrics)
    # Outermost: every answer carries them.
    app.add_middleware(SecurityHeaders, portal_frame_origins=settings.portal_frame_origins)
    # The gateway's calls, through the same layers but for the router's walk of every route.
    app.add_middleware(GatewayRoutes, settings=settings, metrics=app.state.metrics)
    if settings.trusted_proxy_list:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxy_list)
    # The ingestion routes first: routes are matched in order (each one tried in turn), and
    # these take the load; then the budget check and the tenant's summary.
    for router in (
        usage_router,
        budgets_router,
        tenant_router,
        ops_router,
        auth_router,
        organizations_router,
        licenses_router,
        audit_router,
        alerts_router,
        pricing_router,
        token_usage_router,
        budget_admin_router,
        otlp_router,
        portal_router,
        provider_reports_router,
        gateway_router,
        gateway_admin_router,
    ):
        app.include_router(router)
    install_web(app)
    install_openapi(app)
    return app
