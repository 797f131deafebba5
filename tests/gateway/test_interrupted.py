"""A gateway killed mid-call (kill -9) leaves its hold: once the call's longest duration is
over it is listed as an interrupted call in the API, on the dashboard and on the
organization's page, instead of expiring unseen."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from tests.conftest import FixedClock
from tests.gateway.ledger import holds, stored_events
from tests.gateway.upstream import UPSTREAM_ANTHROPIC_KEY
from tests.operations.conftest import Server
from tests.web.conftest import read, sign_in
from tokenledger.app import create_app


def test_a_call_whose_gateway_was_killed_is_listed_as_interrupted(
    database_url, settings, database, make_tenant, fake, upstream_url, tmp_path: Path
):
    tenant = make_tenant(license={})
    server = Server(
        database_url,
        tmp_path,
        TOKENLEDGER_ANTHROPIC_API_KEY=UPSTREAM_ANTHROPIC_KEY,
        TOKENLEDGER_ANTHROPIC_BASE_URL=upstream_url,
        TOKENLEDGER_GATEWAY_MAX_CALL_SECONDS="60",
    )
    server.start()
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 1000,
        "stream": True,
        "messages": [{"role": "user", "content": "Hello"}],
    }
    raw = json.dumps(body, separators=(",", ":")).encode()
    # claude-haiku-4-5: (body bytes + 1000) tokens at the 1-hour write rate (2 USD/MTok)
    # and 1000 output tokens at 5 USD/MTok, in micro-USD.
    held_usd = str((Decimal(len(raw) + 1000) * 2 + 1000 * 5) / 10**6)
    try:
        with (
            httpx.Client(base_url=server.url, timeout=20) as http,
            http.stream(
                "POST",
                "/gateway/anthropic/v1/messages",
                content=raw,
                headers={
                    "content-type": "application/json",
                    "x-api-key": tenant.key,
                    "anthropic-version": "2023-06-01",
                    "x-fake-scenario": "gate",
                },
            ) as response,
        ):
            assert response.status_code == 200
            first = next(response.iter_lines())
            assert first == "event: message_start"
            server.kill()  # mid-call: the upstream has sent one event of many
    finally:
        fake.gate.set()
        server.stop()
    (hold,) = holds(database, tenant.org_id)
    assert (hold.status, hold.kind, hold.model) == ("held", "gateway", "claude-haiku-4-5")
    assert stored_events(database, tenant.org_id) == []
    assert hold.expires_at - hold.created_at == timedelta(seconds=60)

    # Seen once the call's longest duration is over.
    clock = FixedClock(hold.expires_at + timedelta(seconds=1))
    with TestClient(create_app(settings, clock=clock)) as client:
        browser = sign_in(client, database, "admin@example.com", "admin")
        listed = client.get("/api/gateway/interrupted-calls").json()
        assert listed == [
            {
                "reservation_id": hold.id,
                "organization_id": tenant.org_id,
                "organization": tenant.slug,
                "provider": "anthropic",
                "model": "claude-haiku-4-5",
                "started_at": hold.created_at.isoformat().replace("+00:00", "Z"),
                "held_usd": held_usd,
                "expired_at": hold.expires_at.isoformat().replace("+00:00", "Z"),
            }
        ]
        for path in ("/", f"/organizations/{tenant.org_id}"):
            page = browser.get(path)
            assert page.status_code == 200
            assert f'data-reservation="{hold.id}"' in page.text
            assert "claude-haiku-4-5" in read(page.text).text
        # Before its end the call may still be running: not listed.
        clock.now = hold.expires_at - timedelta(seconds=1)
        assert client.get("/api/gateway/interrupted-calls").json() == []
