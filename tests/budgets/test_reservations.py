"""Reservations: holds against what remains, settled by usage, released, expired, raced."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from decimal import Decimal

import httpx
from sqlalchemy import select

from tests.conftest import NOW, budget, event, ingest, serve
from tokenledger.budgets.models import Reservation


def _hold(client, tenant, **body):  # type: ignore[no-untyped-def]
    return client.post("/api/v1/reservations", json=body, headers=tenant.headers)


def _reservation(database, reservation_id: str) -> Reservation:  # type: ignore[no-untyped-def]
    with database.session(write=False) as session:
        row = session.get(Reservation, reservation_id)
        assert row is not None
        return row


def test_hold_by_amount_and_by_model_estimate(client, make_tenant, database):
    tenant = make_tenant(license={"credits_total": Decimal(0), "token_budget_usd": Decimal(10)})
    response = _hold(client, tenant, max_cost_usd="2.5")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["id"].startswith("res_")
    assert body["organization"] == tenant.slug
    assert body["status"] == "held"
    assert body["amount_usd"] == "2.50"
    # The default TTL (TOKENLEDGER_RESERVATION_TTL_SECONDS) is 900 s from the app's now.
    assert datetime.fromisoformat(body["expires_at"]) == NOW + timedelta(minutes=15)
    assert body["budget"]["reserved_usd"] == "2.50"
    assert body["budget"]["remaining_usd"] == "7.50"

    # 100k input and 10k output tokens of claude-sonnet-4-5: 0.30 + 0.15 USD.
    response = _hold(
        client,
        tenant,
        model="claude-sonnet-4-5",
        max_input_tokens=100_000,
        max_output_tokens=10_000,
        ttl_seconds=60,
    )
    assert response.status_code == 201, response.text
    assert response.json()["amount_usd"] == "0.45"
    assert budget(client, tenant)["reserved_usd"] == "2.95"
    row = _reservation(database, response.json()["id"])
    assert row.amount_nano == 450_000_000
    assert row.license_id == tenant.license_id
    assert row.expires_at == NOW + timedelta(seconds=60)

    for bad in (
        {},
        {"max_cost_usd": "1", "model": "claude-sonnet-4-5", "max_input_tokens": 5},
        {"model": "claude-sonnet-4-5"},
        {"max_cost_usd": "-1"},
        {"max_cost_usd": "NaN"},
        {"max_cost_usd": True},
        {"max_cost_usd": "1", "ttl_seconds": 0},
        {"max_cost_usd": "1", "extra": 1},
    ):
        assert _hold(client, tenant, **bad).status_code == 422, bad
    response = _hold(client, tenant, model="no-such-model-xyz", max_input_tokens=10)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "unpriced_model"
    assert budget(client, tenant)["reserved_usd"] == "2.95"


def test_hard_enforcement_refuses_a_hold_larger_than_what_remains(client, make_tenant):
    hard = make_tenant(
        license={
            "credits_total": Decimal(500),  # 5 USD
            "token_budget_usd": Decimal(10),
            "enforcement": "hard",
        }
    )
    ingest(client, hard, event("3"))
    # The credits are the tighter limit: 2 USD remain.
    response = _hold(client, hard, max_cost_usd="2.01")
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "insufficient_budget"
    assert response.json()["error"]["details"]["remaining_usd"] == "2.00"
    assert _hold(client, hard, max_cost_usd="1.5").status_code == 201
    assert _hold(client, hard, max_cost_usd="0.51").status_code == 402
    assert _hold(client, hard, max_cost_usd="0.5").status_code == 201
    state = budget(client, hard)
    assert (state["state"], state["allowed"]) == ("exhausted", False)
    # Once exhausted, no new hold at all, not even an empty one.
    response = _hold(client, hard, max_cost_usd="0")
    assert response.status_code == 402, response.text

    soft = make_tenant(license={"credits_total": Decimal(100), "token_budget_usd": Decimal(1)})
    assert _hold(client, soft, max_cost_usd="50").status_code == 201
    assert budget(client, soft)["state"] == "exhausted"
    assert budget(client, soft)["allowed"] is True
    # Without a license there is nothing to hold against, but the hold is recorded.
    response = _hold(client, make_tenant(), max_cost_usd="50")
    assert response.status_code == 201
    assert response.json()["budget"]["state"] == "no_license"


def test_usage_with_the_reservation_id_settles_it(client, make_tenant, database):
    tenant = make_tenant(
        license={
            "credits_total": Decimal(0),
            "token_budget_usd": Decimal(10),
            "enforcement": "hard",
        }
    )
    other = make_tenant(license={})
    held = _hold(client, tenant, max_cost_usd="6").json()
    assert budget(client, tenant)["remaining_usd"] == "4.00"
    # Another organization's usage cannot settle it.
    ingest(client, other, event("0.1", reservation_id=held["id"]))
    assert _reservation(database, held["id"]).status == "held"

    batch = (
        event("1.25", reservation_id=held["id"]),
        event("0.75", reservation_id=held["id"]),
    )
    ingest(client, tenant, *batch)
    ingest(client, tenant, *batch)  # a retry settles nothing twice
    row = _reservation(database, held["id"])
    assert row.status == "settled"
    assert row.settled_cost_nano == 2 * 10**9
    assert row.closed_at is not None
    state = budget(client, tenant)
    assert state["reserved_usd"] == "0.00"
    assert state["spent_usd"] == "2.00"
    assert state["remaining_usd"] == "8.00"
    # A late call of the same run adds to the settled cost.
    ingest(client, tenant, event("0.5", reservation_id=held["id"]))
    assert _reservation(database, held["id"]).settled_cost_nano == 2_500_000_000
    assert budget(client, tenant)["remaining_usd"] == "7.50"
    # A settled hold can no longer be released into something else: the release is a
    # harmless no-op (204, as releasing twice), the hold stays settled.
    response = client.delete(f"/api/v1/reservations/{held['id']}", headers=tenant.headers)
    assert response.status_code == 204, response.text
    assert _reservation(database, held["id"]).status == "settled"


def test_release_and_expiry(client, clock, make_tenant, database, service_key):
    tenant = make_tenant(license={"credits_total": Decimal(0), "token_budget_usd": Decimal(10)})
    other = make_tenant(license={})
    first = _hold(client, tenant, max_cost_usd="3").json()["id"]
    second = _hold(client, tenant, max_cost_usd="2").json()["id"]
    assert budget(client, tenant)["reserved_usd"] == "5.00"

    response = client.delete(f"/api/v1/reservations/{first}", headers=other.headers)
    assert response.status_code == 404
    assert client.delete(
        "/api/v1/reservations/res_unknown", headers=tenant.headers
    ).status_code == (404)
    assert client.delete(f"/api/v1/reservations/{first}").status_code == 401
    response = client.delete(f"/api/v1/reservations/{first}", headers=tenant.headers)
    assert response.status_code == 204
    assert response.content == b""
    assert _reservation(database, first).status == "released"
    assert budget(client, tenant)["reserved_usd"] == "2.00"
    # Releasing twice is harmless.
    assert client.delete(f"/api/v1/reservations/{first}", headers=tenant.headers).status_code == 204

    # Held for the default 900 s: one second before, it still counts; at 900 s it expires.
    clock.now = NOW + timedelta(seconds=899)
    assert budget(client, tenant)["reserved_usd"] == "2.00"
    clock.now = NOW + timedelta(seconds=900)
    state = budget(client, tenant)
    assert state["reserved_usd"] == "0.00"
    assert state["remaining_usd"] == "10.00"
    response = client.delete(f"/api/v1/reservations/{second}", headers=service_key)
    assert response.status_code == 204
    assert _reservation(database, second).status == "expired"


def test_a_short_ttl_expires_by_itself(client, clock, make_tenant, database):
    """A hold past its expires_at stops counting without any release; the app's clock is
    moved, not waited for, so a slow machine cannot expire it early."""
    tenant = make_tenant(license={"credits_total": Decimal(0), "token_budget_usd": Decimal(10)})
    response = _hold(client, tenant, max_cost_usd="4", ttl_seconds=1)
    assert response.status_code == 201, response.text
    held = response.json()["id"]
    assert _reservation(database, held).expires_at == NOW + timedelta(seconds=1)
    clock.now = NOW + timedelta(milliseconds=999)  # within its TTL
    assert budget(client, tenant)["reserved_usd"] == "4.00"
    clock.now = NOW + timedelta(seconds=1)
    assert budget(client, tenant)["reserved_usd"] == "0.00"
    assert budget(client, tenant)["remaining_usd"] == "10.00"


def test_parallel_holds_never_exceed_what_remains(settings, make_tenant, database):
    """20 clients at once against 1 USD left under hard enforcement: at most 6 of 0.15."""
    tenant = make_tenant(
        license={
            "credits_total": Decimal(1000),  # 10 USD of credits
            "token_budget_usd": Decimal(5),
            "enforcement": "hard",
        }
    )
    threads_count = 20
    barrier = threading.Barrier(threads_count)
    statuses: list[int] = []
    lock = threading.Lock()
    with serve(settings) as base_url:
        with httpx.Client(base_url=base_url) as warm:
            response = warm.post(
                "/api/v1/usage",
                json={"events": [event("4")]},
                headers=tenant.headers,
            )
            assert response.status_code == 200, response.text

        def reserve() -> None:
            with httpx.Client(base_url=base_url, timeout=30) as http:
                barrier.wait()
                response = http.post(
                    "/api/v1/reservations", json={"max_cost_usd": "0.15"}, headers=tenant.headers
                )
                with lock:
                    statuses.append(response.status_code)

        threads = [threading.Thread(target=reserve) for _ in range(threads_count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads)
    assert len(statuses) == threads_count, statuses
    assert sorted(set(statuses)) == [201, 402], statuses
    assert statuses.count(402) == threads_count - 6
    assert statuses.count(201) == 6
    with database.session(write=False) as session:
        held = session.scalars(
            select(Reservation.amount_nano).where(Reservation.organization_id == tenant.org_id)
        ).all()
    assert len(held) == 6
    assert sum(held) <= 10**9


def test_one_group_commit_settles_several_holds(client, make_tenant, database, settings):
    """Two requests written by one group commit, each settling its own hold: one UPDATE
    run for both (an IN list in it made that executemany fail, and the group fell back to
    a transaction per request)."""
    from tokenledger.ledger.prepare import prepare
    from tokenledger.ledger.service import record_usage
    from tokenledger.organizations.refs import in_session
    from tokenledger.pricing.overrides import price_book
    from tokenledger.usage.schemas import UsageBatch

    tenant = make_tenant(license={})
    first = _hold(client, tenant, max_cost_usd="0.50").json()["id"]
    second = _hold(client, tenant, max_cost_usd="0.50").json()["id"]
    with database.session(write=True) as session:
        batches = [
            prepare(
                UsageBatch.model_validate(
                    {"events": [event("0.10", reservation_id=rid, organization=tenant.slug)]}
                ),
                key_org_id=None,
                organizations=in_session(session),
                book=price_book(session),
                settings=settings,
                now=NOW,
            )
            for rid in (first, second)
        ]
        record_usage(session, batches, settings, NOW)
    for rid in (first, second):
        held = _reservation(database, rid)
        assert (held.status, held.settled_cost_nano) == ("settled", 100_000_000)
