"""The CSV export streams every event, row by row, and never leaves a transaction behind.

Events are written through the ingestion service in batches of 1000 (fast, and the same
path as the API); the export is read over HTTP and compared with the stored rows.
"""

from __future__ import annotations

import contextlib
import csv
import io
import socket
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import select, text

from tests.conftest import ADMIN_PASSWORD, Tenant, add_admin, admin_bearer, serve
from tokenledger.config import Settings
from tokenledger.db import Database
from tokenledger.ledger.service import record_batch
from tokenledger.usage.models import UsageEvent
from tokenledger.usage.schemas import UsageBatch

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
FROM = "2026-01-01T00:00:00Z"
TO = "2026-12-01T00:00:00Z"


def _events(count: int) -> list[dict[str, Any]]:
    """Varied events one second apart, the newest a minute before NOW (some share a second)."""
    events = []
    for n in range(count):
        body: dict[str, Any] = {
            "id": f"evt-{n:06d}",
            "model": "house-model-7" if n % 5 == 0 else "claude-sonnet-4-5",
            "input_tokens": n,
            "output_tokens": n % 97,
            "cache_read_input_tokens": n % 13,
            # Pairs of events share a timestamp: the export's order must break ties.
            "timestamp": (NOW - timedelta(minutes=1, seconds=count - n - n % 2)).isoformat(),
        }
        if n % 3 == 0:
            body["cost_usd"] = f"0.{n:09d}"
        if n % 7 == 0:
            body["refresh_id"] = f"run-{n // 7}"
        events.append(body)
    return events


def _store(database: Database, settings: Settings, tenant: Tenant, events: list[dict[str, Any]]):  # type: ignore[no-untyped-def]
    for first in range(0, len(events), 1000):
        batch = UsageBatch.model_validate({"events": events[first : first + 1000]})
        with database.session(write=True) as session:
            record_batch(session, batch, key_org_id=tenant.org_id, settings=settings, now=NOW)


def _stored(database: Database, org_id: int) -> list[UsageEvent]:
    with database.session(write=False) as session:
        query = (
            select(UsageEvent)
            .where(UsageEvent.organization_id == org_id)
            .order_by(UsageEvent.timestamp, UsageEvent.id)
        )
        return list(session.scalars(query))


def _amount(text: str) -> Decimal | None:
    return Decimal(text) if text else None


@pytest.mark.parametrize("count", [0, 1, 999, 1000, 1001, 25_000])
def test_the_export_holds_every_stored_event(
    count, client, database, settings, admin_headers, make_tenant
):
    tenant = make_tenant(license={"valid_from": NOW - timedelta(days=60)})
    sent = _events(count)
    _store(database, settings, tenant, sent)
    response = client.get(
        f"/api/token-usage/{tenant.org_id}/events.csv",
        params={"from": FROM, "to": TO},
        headers=admin_headers,
    )
    assert response.status_code == 200
    rows = list(csv.DictReader(io.StringIO(response.text)))
    stored = _stored(database, tenant.org_id)
    assert len(stored) == count
    assert len(rows) == count
    by_id = {event["id"]: event for event in sent}
    for row, event in zip(rows, stored, strict=True):
        assert row["id"] == event.external_id
        assert datetime.fromisoformat(row["timestamp"]) == event.timestamp
        assert datetime.fromisoformat(row["received_at"]) == event.received_at
        assert row["model"] == event.model
        assert int(row["input_tokens"]) == event.input_tokens
        assert int(row["output_tokens"]) == event.output_tokens
        assert int(row["cache_read_input_tokens"]) == event.cache_read_input_tokens
        assert row["pricing"] == event.pricing
        assert row["refresh_id"] == (event.refresh_id or "")
        assert row["license_id"] == str(event.license_id)
        cost = None if event.cost_nano is None else Decimal(event.cost_nano) / 10**9
        assert _amount(row["cost_usd"]) == cost
        credits = None if event.credits_micro is None else Decimal(event.credits_micro) / 10**6
        assert _amount(row["credits"]) == credits
        # And against what was sent, independently of the database.
        original = by_id[row["id"]]
        assert int(row["input_tokens"]) == original["input_tokens"]
        assert datetime.fromisoformat(row["timestamp"]) == datetime.fromisoformat(
            original["timestamp"]
        )
        if "cost_usd" in original:
            assert Decimal(row["cost_usd"]) == Decimal(original["cost_usd"])
    # Oldest first, ties broken the same way every time, every event once.
    assert [r["id"] for r in rows] == [e.external_id for e in stored]
    assert sorted(r["id"] for r in rows) == sorted(by_id)


def _corrupt(database: Database, external_id: str) -> None:
    """Make one stored row unreadable, as a damaged row or a value the driver refuses is."""
    with database.engine.begin() as connection:
        if database.dialect_name == "sqlite":
            sql = (
                "UPDATE usage_events SET refresh_id = CAST(X'C328' AS TEXT) WHERE external_id = :id"
            )
        else:  # a timestamp past Python's year 9999
            sql = "UPDATE usage_events SET received_at = 'infinity' WHERE external_id = :id"
        connection.execute(text(sql), {"id": external_id})


def _no_transaction_left(database: Database, settings: Settings) -> bool:
    """No connection of the server holds a transaction (a read snapshot) any more."""
    if database.dialect_name == "postgresql":
        with database.engine.connect() as connection:
            lingering = connection.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()"
                )
            )
        return lingering == 0
    # A TRUNCATE checkpoint cannot complete while a reader holds an old snapshot.
    path = settings.sqlite_path()
    assert path is not None
    probe = sqlite3.connect(path, timeout=0)
    try:
        busy, _log, _done = probe.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        probe.close()
    return bool(busy == 0)


def _eventually(condition: Callable[[], bool], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _writes_and_throttle_work(base: str, database: Database, settings: Settings, tenant: Tenant):  # type: ignore[no-untyped-def]
    email = "throttled@example.com"
    add_admin(database, email)
    admin = admin_bearer(add_admin(database, "writer@example.com"))
    with httpx.Client(base_url=base, timeout=30) as http:
        more = {"events": [{"id": "after-the-export", "model": "m", "cost_usd": "1"}]}
        response = http.post("/api/v1/usage", json=more, headers=tenant.headers)
        assert response.status_code == 200, response.text
        response = http.post("/api/organizations", json={"name": "Written after"}, headers=admin)
        assert response.status_code == 201, response.text
        listed = http.get("/api/organizations", params={"q": "Written after"}, headers=admin)
        assert listed.json()["total"] == 1
        statuses = [
            http.post("/api/auth/token", data={"username": email, "password": "wrong"}).status_code
            for _ in range(settings.login_max_failures + 1)
        ]
        assert statuses == [401] * settings.login_max_failures + [429]
        right = {"username": email, "password": ADMIN_PASSWORD}
        assert http.post("/api/auth/token", data=right).status_code == 429


def test_a_failure_mid_stream_breaks_the_transfer_and_frees_the_database(
    database, settings, admin_headers, make_tenant
):
    tenant = make_tenant(license={"valid_from": NOW - timedelta(days=60)})
    _store(database, settings, tenant, _events(2500))
    _corrupt(database, "evt-001500")  # on the second page
    with serve(settings) as base:
        received = b""
        with (
            httpx.Client(base_url=base, timeout=30) as http,
            http.stream(
                "GET",
                f"/api/token-usage/{tenant.org_id}/events.csv",
                params={"from": FROM, "to": TO},
                headers=admin_headers,
            ) as response,
        ):
            assert response.status_code == 200
            chunks = response.iter_bytes()

            def read_all() -> None:
                nonlocal received
                for chunk in chunks:
                    received += chunk

            with pytest.raises(httpx.RemoteProtocolError):
                read_all()
        # The header and the first page arrived; the transfer then broke, visibly.
        lines = received.decode().splitlines()
        assert lines[0].startswith("id,timestamp")
        assert len(lines) == 1 + 1000
        assert _eventually(lambda: _no_transaction_left(database, settings))
        _writes_and_throttle_work(base, database, settings, tenant)


def _raw_get(base: str, path: str, headers: dict[str, str]) -> socket.socket:
    """A GET on a socket with a tiny receive buffer, so the server soon waits on us."""
    address = urlsplit(base)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((address.hostname, address.port))
    lines = [f"GET {path} HTTP/1.1", f"Host: {address.netloc}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def _wide_events(count: int) -> list[dict[str, Any]]:
    """Events whose CSV rows are long (ids and refresh ids of 128 characters)."""
    events = _events(count)
    for event in events:
        event["id"] = event["id"].ljust(128, "x")
        event["refresh_id"] = "run-".ljust(128, "r")
    return events


def test_an_aborted_download_leaves_no_transaction_behind(
    database, settings, admin_headers, make_tenant
):
    tenant = make_tenant(license={"valid_from": NOW - timedelta(days=60)})
    # About 6 MB of CSV: more than the server's socket buffers hold (up to 4 MiB here),
    # so the export is still running when the client leaves.
    _store(database, settings, tenant, _wide_events(15_000))
    with serve(settings) as base:
        path = f"/api/token-usage/{tenant.org_id}/events.csv?from={FROM}&to={TO}"
        with contextlib.closing(_raw_get(base, path, admin_headers)) as sock:
            first = sock.recv(2048)
            assert first.startswith(b"HTTP/1.1 200")
            # Writes land meanwhile; the export, blocked on our full socket, still reads
            # its own snapshot: proof that the client leaves mid-stream.
            writes = iter(range(1000))

            def export_holds_a_snapshot() -> bool:
                meanwhile = {"id": f"meanwhile-{next(writes)}", "model": "m", "cost_usd": "1"}
                _store(database, settings, tenant, [meanwhile])
                return not _no_transaction_left(database, settings)

            assert _eventually(export_holds_a_snapshot)
        assert _eventually(lambda: _no_transaction_left(database, settings))
        _writes_and_throttle_work(base, database, settings, tenant)
        assert _no_transaction_left(database, settings)
