"""The batch path makes a constant number of database round trips, whatever its size."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text

from tests.conftest import Tenant, statements_sent
from tests.ledger.conftest import ok, snapshot
from tokenledger.db import Database

LICENSE = {"valid_from": "2026-01-01T00:00:00Z", "credits_total": 10**6}


def batch(prefix: str, size: int, orgs: list[Tenant]) -> list[dict[str, Any]]:
    """Every kind of event: priced, provided, unpriced, split caches, many days and months."""
    events = []
    for n in range(size):
        body: dict[str, Any] = {
            "id": f"{prefix}-{n}",
            "organization": orgs[n % len(orgs)].slug,
            "timestamp": f"2026-{1 + n % 10:02d}-{1 + n % 28:02d}T{n % 24:02d}:00:00Z",
            "model": ["claude-sonnet-4-5", "claude-haiku-4-5", "unknown-model"][n % 3],
            "input_tokens": 100 + n,
            "output_tokens": n % 50,
            "cache_read_input_tokens": n % 7,
            "cache_creation": {"ephemeral_5m_input_tokens": n % 5, "ephemeral_1h_input_tokens": 1},
            "refresh_id": f"run-{n % 3}",
        }
        if n % 4 == 0:
            body["cost_usd"] = "0.0001"
        events.append(body)
    return events


def test_statements_per_batch_do_not_grow_with_its_size(
    app: FastAPI,
    client: TestClient,
    database: Database,
    service_headers: dict[str, str],
    make_tenant: Callable[..., Tenant],
) -> None:
    orgs = [make_tenant(LICENSE), make_tenant(LICENSE), make_tenant()]
    earlier = batch("earlier", 3, orgs)
    ok(client, service_headers, *earlier)  # also records the key's use, once a minute

    counts = {}
    for size in (10, 1000):
        # in both: a retry of a stored event and a repeat within the batch
        events = [*batch(f"b{size}", size - 2, orgs), earlier[0]]
        events.append(events[1])
        with statements_sent(app.state.database) as statements:
            body = ok(client, service_headers, *events)
        assert [r["status"] for r in body["results"]].count("created") == size - 2
        counts[size] = len(statements)
    assert snapshot(database).events == 3 + 8 + 998
    assert counts[10] == counts[1000], counts
    assert counts[1000] <= 30, counts  # and few: no statement per event or per row


def test_the_writer_remembers_stored_prices(
    app: FastAPI,
    client: TestClient,
    database: Database,
    service_headers: dict[str, str],
    make_tenant: Callable[..., Tenant],
) -> None:
    org = make_tenant(LICENSE)
    sonnet = {"organization": org.slug, "model": "claude-sonnet-4-5", "input_tokens": 1000}
    ok(client, service_headers, {"id": "first", **sonnet})  # stores the price row
    ok(client, service_headers, {"id": "second", **sonnet})  # reads its id, remembers it
    with statements_sent(app.state.database) as statements:
        ok(client, service_headers, {"id": "third", **sonnet})
    # Prices are looked up by their fingerprint: not once more for a known one.
    assert not [s for s in statements if "fingerprint" in s], statements

    # A price seen for the first time is still stored, and its events point at it.
    haiku = {**sonnet, "model": "claude-haiku-4-5"}
    with statements_sent(app.state.database) as statements:
        ok(client, service_headers, {"id": "fourth", **haiku})
    assert any(s.startswith("INSERT INTO usage_prices") for s in statements), statements
    with database.session(write=False) as session:
        models = dict(
            session.execute(
                text(
                    "SELECT e.external_id, p.model FROM usage_events AS e "
                    "JOIN usage_prices AS p ON p.id = e.price_id"
                )
            ).all()
        )
    assert models == {
        "first": "claude-sonnet-4-5",
        "second": "claude-sonnet-4-5",
        "third": "claude-sonnet-4-5",
        "fourth": "claude-haiku-4-5",
    }
