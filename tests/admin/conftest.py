"""Fixtures of the admin, budget and alert tests: ingest keys, a live server, a receiver."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import FixedClock, Tenant, key_bearer, serving, write
from tokenledger.app import create_app
from tokenledger.auth.service import create_api_key
from tokenledger.config import Settings
from tokenledger.db import Database


@pytest.fixture
def app(settings: Settings, clock: FixedClock) -> Any:
    """Every admin test's app (and `client`) reads "now" from the clock fixture: NOW
    (2026-11-18 12:00 UTC) unless the test sets clock.now. Only the servers of serve()
    and the webhook worker run on the real clock."""
    return create_app(settings, clock=clock)


@pytest.fixture
def service_key(database: Database) -> dict[str, str]:
    with write(database) as session:
        _key, secret = create_api_key(session, "service", None, actor=None)
    return key_bearer(secret)


_counter = iter(range(1, 10**9))


def event(
    cost: str | None = "0.01",
    *,
    at: datetime | None = None,
    id: str | None = None,
    model: str = "claude-sonnet-4-5",
    **fields: Any,
) -> dict[str, Any]:
    """A usage event; with cost_usd given unless cost is None (then priced from tokens)."""
    body: dict[str, Any] = {
        "id": id or f"evt-{next(_counter)}",
        "model": model,
        "input_tokens": 1000,
        "output_tokens": 100,
    }
    if cost is not None:
        body["cost_usd"] = cost
    if at is not None:
        body["timestamp"] = at.isoformat()
    body.update(fields)
    return body


def usd_budget_license(
    now: datetime,
    *,
    days_before: int,
    days_after: int | None = None,
    credits_total: int = 0,
    token_budget_usd: int = 10,
) -> dict[str, Any]:
    """License overrides: a USD budget over the license's whole term, valid from days before."""
    license: dict[str, Any] = {
        "credits_total": Decimal(credits_total),
        "token_budget_usd": Decimal(token_budget_usd),
        "budget_period": "license",
        "valid_from": now - timedelta(days=days_before),
    }
    if days_after is not None:
        license["valid_until"] = now + timedelta(days=days_after)
    return license


def ingest(client: Any, tenant: Tenant, *events: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/api/v1/usage", json={"events": list(events)}, headers=tenant.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def budget(client: Any, tenant: Tenant) -> dict[str, Any]:
    response = client.get("/api/v1/budget", headers=tenant.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def usd(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


@contextmanager
def serve(settings: Settings) -> Iterator[str]:
    """A real uvicorn server with the app (on the real clock) on 127.0.0.1."""
    with serving(create_app(settings)) as url:
        yield url


@pytest.fixture
def live_server(settings: Settings) -> Iterator[str]:
    with serve(settings) as url:
        yield url


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1: records every request, answers with `statuses`."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(length)
            state.requests.append(Received(self.path, dict(self.headers.items()), body))
            status = state.statuses.pop(0) if state.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/tokenledger"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as client:
        yield client


def own_client(app: Any) -> TestClient:
    """A TestClient without lifespan, for one thread of a parallel test."""
    return TestClient(app)
