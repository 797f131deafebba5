"""Credits: each event is charged to the license in force at its timestamp, exactly."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from fastapi.testclient import TestClient

from tests.conftest import Tenant, write
from tests.ledger.conftest import credits_used_micro, monthly_rows, ok, stored_events
from tokenledger.db import Database
from tokenledger.ledger.reconcile import reconcile
from tokenledger.licenses import service as licenses
from tokenledger.money import credits_for_cost


def event(id: str, at: str, cost: str | None, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": id, "timestamp": at, "model": "claude-sonnet-4-5"}
    if cost is not None:
        body["cost_usd"] = cost
    body.update(fields)
    return body


def license_json(client: TestClient, headers: dict[str, str], license_id: int) -> Any:
    response = client.get(f"/api/licenses/{license_id}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def test_events_belong_to_the_license_in_force_at_their_timestamp(
    client: TestClient,
    database: Database,
    make_tenant: Callable[..., Tenant],
    admin_headers: dict[str, str],
) -> None:
    tenant = make_tenant(
        {
            "status": "expired",
            "valid_from": "2026-01-01T00:00:00Z",
            "valid_until": "2026-04-01T00:00:00+02:00",  # 2026-03-31T22:00:00Z
            "cost_per_credit": "0.01",
        },
        {"valid_from": "2026-03-31T22:00:00Z", "cost_per_credit": "0.03"},
        {"status": "cancelled", "valid_from": "2025-01-01T00:00:00Z", "cost_per_credit": "1"},
    )
    first, second, cancelled = tenant.license_ids
    body = ok(
        client,
        tenant.headers,
        event("before-any", "2025-12-31T23:59:59Z", "1.00"),
        event("first-begins", "2026-01-01T00:00:00Z", "0.01"),
        event("first-ends", "2026-03-31T21:59:59.999999Z", "0.02"),
        event("second-begins", "2026-03-31T22:00:00Z", "0.01"),
        event("second-later", "2026-11-01T00:00:00Z", "0.03"),
        # claude-sonnet-4-5, 1000 * $3/MTok = $0.003 = 0.1 credit at 0.03
        event("second-priced", "2026-11-01T00:00:00Z", None, input_tokens=1000),
        event("second-unpriced", "2026-11-01T00:00:00Z", None, model="no-such-model"),
    )
    results = {r["id"]: r for r in body["results"]}
    assert results["before-any"]["credits"] is None
    assert results["before-any"]["cost_usd"] == "1.00"
    assert results["first-begins"]["credits"] == "1.0"
    assert results["first-ends"]["credits"] == "2.0"
    assert results["second-begins"]["credits"] == "0.333333"  # 0.01 / 0.03, rounded
    assert results["second-later"]["credits"] == "1.0"
    assert results["second-priced"]["credits"] == "0.1"
    assert results["second-unpriced"]["credits"] is None

    stored = stored_events(database)
    assert {id: row.license_id for id, row in stored.items()} == {
        "before-any": None,
        "first-begins": first,
        "first-ends": first,
        "second-begins": second,
        "second-later": second,
        "second-priced": second,
        "second-unpriced": second,
    }
    # outside any license, still the organization's usage
    assert monthly_rows(database, tenant.org_id)["2025-12"]["cost_nano"] == 1_000_000_000

    assert license_json(client, admin_headers, first)["credits_used"] == "3.000000"
    assert license_json(client, admin_headers, second)["credits_used"] == "1.433333"
    assert license_json(client, admin_headers, cancelled)["credits_used"] == "0.000000"


def test_credits_are_cost_over_cost_per_credit_rounded_half_to_even(
    client: TestClient,
    database: Database,
    make_tenant: Callable[..., Tenant],
    admin_headers: dict[str, str],
) -> None:
    # 0.03 USD a credit = 30_000_000 nano; micro-credits = cost_nano * 10**6 / 30_000_000
    tenant = make_tenant({"valid_from": "2026-01-01T00:00:00Z", "cost_per_credit": "0.03"})
    cases = {
        "0.000000015": 0,  # 0.5 micro-credit: to even, 0
        "0.000000045": 2,  # 1.5: to even, 2
        "0.000000075": 2,  # 2.5: to even, 2
        "0.000000076": 3,  # 2.5333...: up
        "0.000000014": 0,  # 0.4666...: down
        "0.02": 666_667,  # 0.6666...: up
        "123.456789012": 4_115_226_300,  # 4115.2263004: down
    }
    events = [event(f"c{n}", "2026-06-01T00:00:00Z", cost) for n, cost in enumerate(cases)]
    ok(client, tenant.headers, *events)
    stored = stored_events(database)
    total = 0
    for n, (cost, micro) in enumerate(cases.items()):
        row = stored[f"c{n}"]
        assert row.credits_micro == micro, cost
        assert row.credits_micro == credits_for_cost(row.cost_nano, 30_000_000)
        total += micro
    assert credits_used_micro(database, tenant.license_id) == total
    used = license_json(client, admin_headers, tenant.license_id)["credits_used"]
    assert Decimal(used) == Decimal(total) / 10**6


def test_credits_used_is_event_credits_plus_adjustments(
    client: TestClient,
    database: Database,
    make_tenant: Callable[..., Tenant],
    admin_headers: dict[str, str],
) -> None:
    tenant = make_tenant({"valid_from": "2026-01-01T00:00:00Z", "cost_per_credit": "0.01"})
    ok(client, tenant.headers, event("a", "2026-06-01T00:00:00Z", "1.50"))  # 150 credits
    with write(database) as session:
        lic = licenses.get(session, tenant.license_id)
        licenses.adjust_credits_used(session, lic, 100_000_000, "tests", "goodwill")  # to 100
    ok(
        client,
        tenant.headers,
        event("b", "2026-06-02T00:00:00Z", "0.25"),  # 25 credits
        event("a", "2026-06-01T00:00:00Z", "1.50"),  # a duplicate adds nothing
    )
    assert license_json(client, admin_headers, tenant.license_id)["credits_used"] == "125.000000"
    with write(database) as session:
        licenses.adjust_credits_used(session, licenses.get(session, tenant.license_id), 0, "t", "")
        assert reconcile(session, fix=False) == []
    ok(client, tenant.headers, event("c", "2026-06-03T00:00:00Z", "0.01"))
    assert credits_used_micro(database, tenant.license_id) == 1_000_000
    with database.session(write=False) as session:
        assert reconcile(session, fix=False) == []
