"""Idempotency is permanent: a reused id is a duplicate (same content) or a conflict (409)."""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import NOW, Tenant, serve
from tests.ledger.conftest import LICENSE, ok, post, snapshot, stored_events, wait_until_blocked
from tests.ledger.conftest import usage_event as event
from tokenledger.config import Settings
from tokenledger.db import Database
from tokenledger.ledger.reconcile import reconcile
from tokenledger.ledger.service import record_batch as ingest
from tokenledger.usage.schemas import UsageBatch


def statuses(body: dict[str, Any]) -> list[str]:
    return [result["status"] for result in body["results"]]


def test_same_id_and_content_is_a_duplicate_with_the_original_result(
    client: TestClient, database: Database, make_tenant: Callable[..., Tenant]
) -> None:
    tenant = make_tenant(LICENSE)
    first = ok(client, tenant.headers, event("a"), event("b", cost_usd="0.10"))
    assert statuses(first) == ["created", "created"]
    assert first["results"][0] | {"status": "x"} == {
        "id": "a",
        "organization": tenant.slug,
        "status": "x",
        "cost_usd": "0.0045",
        "credits": "0.45",
        "pricing": "priced",
    }
    before = snapshot(database)

    # The same events again, written differently: keys in another order, the same instant
    # in another offset, the same cost with another number of zeros, the org by id.
    again = [
        dict(reversed(event("a").items())),
        event("b", cost_usd="0.1000", timestamp="2026-06-15T14:00:00+02:00"),
        event("a", organization=tenant.org_id),
    ]
    second = ok(client, tenant.headers, *again)
    assert statuses(second) == ["duplicate"] * 3
    assert [r | {"status": None} for r in second["results"][:2]] == [
        r | {"status": None} for r in first["results"]
    ]
    assert second["results"][2] == second["results"][0]
    assert snapshot(database) == before


def test_a_later_price_does_not_change_a_duplicates_answer(
    client: TestClient,
    database: Database,
    make_tenant: Callable[..., Tenant],
    admin_headers: dict[str, str],
) -> None:
    """The duplicate returns what was stored, not what pricing would say today."""
    tenant = make_tenant(LICENSE)
    first = ok(client, tenant.headers, event("a"))
    response = client.put(
        "/api/pricing/overrides/anthropic/claude-sonnet-4-5",
        json={"input": "30", "output": "150"},
        headers=admin_headers,
    )
    assert response.status_code == 200, response.text
    second = ok(client, tenant.headers, event("a"))
    assert second["results"][0]["cost_usd"] == first["results"][0]["cost_usd"] == "0.0045"
    assert second["results"][0]["status"] == "duplicate"


def test_same_id_with_other_content_is_409_and_nothing_of_the_batch_is_stored(
    client: TestClient, database: Database, make_tenant: Callable[..., Tenant]
) -> None:
    tenant = make_tenant(LICENSE)
    ok(client, tenant.headers, event("a"), event("stamped"))
    before = snapshot(database)
    for case, changed in [
        ("tokens", event("a", input_tokens=1001)),
        ("model", event("a", model="claude-haiku-4-5")),
        ("timestamp", event("a", timestamp="2026-06-15T12:00:01Z")),
        ("cost", event("a", cost_usd="0.0045")),
        ("metadata", event("a", metadata={"run": 1})),
        ("refresh", event("a", refresh_id="r1")),
        ("no timestamp now", {k: v for k, v in event("stamped").items() if k != "timestamp"}),
    ]:
        response = post(client, tenant.headers, event("new-1"), changed, event("new-2"))
        assert response.status_code == 409, (case, response.text)
        error = response.json()["error"]
        assert error["code"] == "idempotency_conflict", case
        assert "events[1]" in error["message"], case
        assert snapshot(database) == before, case
    assert set(stored_events(database)) == {"a", "stamped"}


def test_within_one_batch(
    client: TestClient, database: Database, make_tenant: Callable[..., Tenant]
) -> None:
    tenant = make_tenant(LICENSE)
    response = post(client, tenant.headers, event("x"), event("y"), event("x", output_tokens=1))
    assert response.status_code == 409, response.text
    assert "events[2]" in response.json()["error"]["message"]
    assert snapshot(database).events == 0

    body = ok(client, tenant.headers, event("x"), event("y"), event("x"))
    assert statuses(body) == ["created", "created", "duplicate"]
    assert body["results"][2] | {"status": "created"} == body["results"][0]
    assert snapshot(database).events == 2
    # twice in a batch, already stored
    body = ok(client, tenant.headers, event("x"), event("z"), event("x"))
    assert statuses(body) == ["duplicate", "created", "duplicate"]
    assert stored_events(database)["x"].input_tokens == 1000
    assert snapshot(database).events == 3


def test_an_event_stamped_at_receipt_is_still_a_duplicate_on_retry(
    client: TestClient, database: Database, make_tenant: Callable[..., Tenant]
) -> None:
    tenant = make_tenant({"cost_per_credit": "0.01"})
    unstamped = {k: v for k, v in event("now").items() if k != "timestamp"}
    first = ok(client, tenant.headers, unstamped)
    stored = stored_events(database)["now"].timestamp
    second = ok(client, tenant.headers, unstamped)
    assert statuses(second) == ["duplicate"]
    assert second["results"][0]["cost_usd"] == first["results"][0]["cost_usd"] == "0.0045"
    assert stored_events(database)["now"].timestamp == stored
    assert snapshot(database).events == 1


def test_ids_are_unique_per_organization(
    client: TestClient,
    database: Database,
    service_headers: dict[str, str],
    make_tenant: Callable[..., Tenant],
) -> None:
    one, two = make_tenant(LICENSE), make_tenant(LICENSE)
    body = ok(
        client,
        service_headers,
        event("same", organization=one.slug),
        event("same", organization=two.slug, input_tokens=5),
    )
    assert statuses(body) == ["created", "created"]
    assert stored_events(database, one.org_id)["same"].input_tokens == 1000
    assert stored_events(database, two.org_id)["same"].input_tokens == 5


# --- races ---------------------------------------------------------------------------

THREADS = 8


def _hammer(url: str, batches: list[tuple[dict[str, str], list[dict[str, Any]]]]) -> list[Any]:
    """Send every batch from its own thread at the same moment; the responses, in order."""
    barrier = threading.Barrier(len(batches))
    responses: list[Any] = [None] * len(batches)

    def send(index: int) -> None:
        headers, events = batches[index]
        with httpx.Client(base_url=url, timeout=60) as http:
            barrier.wait()
            try:
                responses[index] = http.post(
                    "/api/v1/usage", json={"events": events}, headers=headers
                )
            except httpx.HTTPError as exc:  # surfaced by the caller's assertions
                responses[index] = exc

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return responses


def _assert_consistent(database: Database) -> None:
    with database.session(write=False) as session:
        assert reconcile(session, fix=False) == []


@pytest.mark.slow
def test_identical_batches_sent_concurrently_are_stored_once(
    settings: Settings,
    database: Database,
    service_headers: dict[str, str],
    make_tenant: Callable[..., Tenant],
) -> None:
    licensed, unlicensed = make_tenant(LICENSE), make_tenant()
    with serve(settings) as url:
        # One request first: it records the key's last use, which later requests skip.
        warm = _hammer(url, [(service_headers, [event("warm", organization=licensed.slug)])])
        assert warm[0].status_code == 200, warm[0]
        for round_ in range(3):
            batch = [
                event(f"r{round_}-{i}", organization=org.slug, input_tokens=1000 + i)
                for i in range(20)
                for org in (licensed, unlicensed)
            ]
            responses = _hammer(url, [(service_headers, batch)] * THREADS)
            assert all(not isinstance(r, Exception) for r in responses), responses
            assert [r.status_code for r in responses] == [200] * THREADS, [
                r.text for r in responses if r.status_code != 200
            ]
            per_event: dict[tuple[str, str], Counter[str]] = {}
            for response in responses:
                for result in response.json()["results"]:
                    key = (result["organization"], result["id"])
                    per_event.setdefault(key, Counter())[result["status"]] += 1
                    # every thread reports the stored cost, created or duplicate:
                    # (1000 + i) * $3/MTok + 100 * $15/MTok = 0.0045 + 0.000003 * i USD
                    i = int(result["id"].rsplit("-", 1)[1])
                    expected = Decimal("0.0045") + Decimal("0.000003") * i
                    assert Decimal(result["cost_usd"]) == expected, result
            assert len(per_event) == len(batch)
            for key, counts in per_event.items():
                assert counts == Counter(created=1, duplicate=THREADS - 1), (key, counts)
    assert len(stored_events(database, licensed.org_id)) == 61
    assert len(stored_events(database, unlicensed.org_id)) == 60
    _assert_consistent(database)


@pytest.mark.slow
def test_overlapping_batches_in_any_order_do_not_fail(
    settings: Settings,
    database: Database,
    service_headers: dict[str, str],
    make_tenant: Callable[..., Tenant],
) -> None:
    """The same events in a different order per request: no deadlock, no 5xx, stored once."""
    tenants = [make_tenant(), make_tenant()]
    shuffler = random.Random(7)
    with serve(settings) as url:
        warm = _hammer(url, [(service_headers, [event("warm", organization=tenants[0].slug)])])
        assert warm[0].status_code == 200, warm[0]
        for round_ in range(3):
            events = [
                event(f"o{round_}-{i}", organization=tenant.slug)
                for i in range(30)
                for tenant in tenants
            ]
            batches = []
            for _ in range(THREADS):
                shuffled = events[:]
                shuffler.shuffle(shuffled)
                batches.append((service_headers, shuffled))
            responses = _hammer(url, batches)
            assert all(not isinstance(r, Exception) for r in responses), responses
            assert [r.status_code for r in responses] == [200] * THREADS, [
                r.text for r in responses if r.status_code != 200
            ]
            created = Counter(
                (r["organization"], r["id"])
                for response in responses
                for r in response.json()["results"]
                if r["status"] == "created"
            )
            assert sorted(created.values()) == [1] * len(events)
    assert snapshot(database).events == 1 + 3 * 60
    _assert_consistent(database)


def test_batches_take_their_ids_in_key_order(
    settings: Settings, database: Database, make_tenant: Callable[..., Tenant]
) -> None:
    """A batch waiting for another's uncommitted id holds none of the ids that one needs.

    Transaction A has written k1 and will write k2; batch B = [k2, k1] arrives meanwhile.
    Unordered, B takes k2 and waits for k1 while A waits for k2: a deadlock on PostgreSQL.
    """
    tenant = make_tenant()

    def batch(*ids: str) -> UsageBatch:
        return UsageBatch.model_validate(
            {"events": [event(i, organization=tenant.slug) for i in ids]}
        )

    failures: list[BaseException] = []
    results: list[list[str]] = []

    def second() -> None:
        try:
            with database.session(write=True) as session:
                outcome = ingest(
                    session, batch("k2", "k1"), key_org_id=None, settings=settings, now=NOW
                )
                results.append([r["status"] for r in outcome.results])
        except BaseException as exc:
            failures.append(exc)

    with database.session(write=True) as session:
        ingest(session, batch("k1"), key_org_id=None, settings=settings, now=NOW)
        thread = threading.Thread(target=second)
        thread.start()
        wait_until_blocked(database)
        ingest(session, batch("k2"), key_org_id=None, settings=settings, now=NOW)
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert failures == []
    assert results == [["duplicate", "duplicate"]]
    _assert_consistent(database)
