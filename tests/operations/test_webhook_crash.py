"""The webhook outbox across kill -9: every alert delivered after a restart, none lost."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import standardwebhooks
from sqlalchemy import func, select

from tests.conftest import new_tenant
from tests.operations.conftest import Server
from tokenledger.alerts.models import Alert, WebhookDelivery
from tokenledger.alerts.schemas import WebhookCreate
from tokenledger.alerts.webhooks import create_webhook
from tokenledger.audit.service import Operator
from tokenledger.db import Database, utcnow

TENANTS = 8
ALERTS_PER_TENANT = 4  # credits and budget, warning and exhausted
HOLD_REQUEST = 5  # the receiver holds this request open: the server dies meanwhile


@dataclass
class Receiver:
    url: str = ""
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    holding: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:
                state.requests.append((dict(self.headers.items()), body))
                number = len(state.requests)
            if number == HOLD_REQUEST:
                state.holding.set()
                state.release.wait(30)
            time.sleep(0.02)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _delivered(database: Database) -> tuple[int, int]:
    with database.session(write=False) as session:
        total = session.scalar(select(func.count()).select_from(WebhookDelivery)) or 0
        done = (
            session.scalar(
                select(func.count())
                .select_from(WebhookDelivery)
                .where(WebhookDelivery.status == "delivered")
            )
            or 0
        )
    return total, done


def test_kill_9_during_deliveries_loses_no_alert(database_url, database, server_root, receiver):
    with database.session(write=True) as session:
        hook = create_webhook(
            session,
            WebhookCreate(url=receiver.url, description="crash test"),
            actor=Operator("tests"),
            allow_private=True,
        )
        secret = hook.secret
    # $0.0045 an event against 1 credit of $0.001 and a $0.001 budget: all four alerts.
    tenants = [
        new_tenant(
            database,
            {
                "credits_total": Decimal(1),
                "cost_per_credit": Decimal("0.001"),
                "token_budget_usd": Decimal("0.001"),
                "valid_from": utcnow() - timedelta(hours=1),
            },
        )
        for _ in range(TENANTS)
    ]
    server = Server(
        database_url,
        server_root,
        workers=2,
        TOKENLEDGER_WEBHOOK_WORKER="true",
        TOKENLEDGER_WEBHOOKS_ALLOW_PRIVATE="true",
        TOKENLEDGER_WEBHOOK_LEASE_SECONDS="3",
    )
    server.start()
    try:
        at = (utcnow() - timedelta(minutes=1)).isoformat()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for number, tenant in enumerate(tenants):
                event = {
                    "id": f"crash-{number}",
                    "model": "claude-sonnet-4-5",
                    "timestamp": at,
                    "input_tokens": 1000,
                    "output_tokens": 100,
                }
                response = client.post(
                    "/api/v1/usage", json={"events": [event]}, headers=tenant.headers
                )
                assert response.status_code == 200, response.text
        assert receiver.holding.wait(30), "no delivery reached the receiver"
        server.kill()
    finally:
        receiver.release.set()
        server.stop()

    expected = TENANTS * ALERTS_PER_TENANT
    total, done = _delivered(database)
    assert total == expected
    assert done < expected, "the kill came too late to interrupt the deliveries"

    server.start()
    try:
        deadline = time.monotonic() + 90
        while _delivered(database)[1] < expected:
            assert time.monotonic() < deadline, f"undelivered after restart:\n{server.log()}"
            time.sleep(0.1)
    finally:
        server.stop()

    with database.session(write=False) as session:
        alerts = {row.id: row for row in session.scalars(select(Alert))}
        deliveries = {row.id: row.alert_id for row in session.scalars(select(WebhookDelivery))}
    assert len(alerts) == expected

    verifier = standardwebhooks.Webhook(secret)
    bodies_by_id: dict[str, set[bytes]] = defaultdict(set)
    for headers, body in receiver.requests:
        payload = verifier.verify(body, headers)
        bodies_by_id[headers["webhook-id"]].add(body)
        assert headers["webhook-id"] == f"msg_tl_{_delivery_of(deliveries, payload['id'])}"
    # Every alert arrived; a repeat only ever under the same webhook-id with the same body.
    received = {json.loads(body)["id"] for _headers, body in receiver.requests}
    assert received == set(alerts)
    assert len(bodies_by_id) == expected
    assert all(len(bodies) == 1 for bodies in bodies_by_id.values())
    held_id = receiver.requests[HOLD_REQUEST - 1][0]["webhook-id"]
    repeats = [headers for headers, _body in receiver.requests if headers["webhook-id"] == held_id]
    assert len(repeats) >= 2, "the delivery cut off by the kill was not sent again"


def _delivery_of(deliveries: dict[int, int], alert_id: int) -> int:
    [delivery_id] = [d for d, a in deliveries.items() if a == alert_id]
    return delivery_id
