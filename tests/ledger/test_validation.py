"""POST /api/v1/usage refuses bad input whole: 422 naming the event, and nothing stored."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta, timezone
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import NOW, Tenant, key_bearer, make_settings, write
from tests.factories import make_org
from tests.ledger.conftest import ok, post, rfc3339, snapshot, stored_events, usage_event
from tokenledger.app import create_app
from tokenledger.auth.service import create_api_key
from tokenledger.db import Database

_DROP = object()  # a field to leave out
PACIFIC = timezone(timedelta(hours=-7))


def event(id: str, **fields: Any) -> dict[str, Any]:
    body = usage_event(id, **fields)
    return {name: value for name, value in body.items() if value is not _DROP}


# (what is wrong, the fields of the bad event); each bad event goes second in its batch.
INVALID: list[tuple[str, dict[str, Any]]] = [
    ("negative tokens", {"input_tokens": -1}),
    ("tokens above 10^9", {"output_tokens": 10**9 + 1}),
    ("boolean tokens", {"input_tokens": True}),
    ("float tokens", {"output_tokens": 100.0}),
    ("fractional tokens", {"cache_read_input_tokens": 1.5}),
    ("numeric string tokens", {"input_tokens": "1000"}),
    ("null tokens", {"output_tokens": None}),
    ("boolean cache writes", {"cache_creation_input_tokens": False}),
    ("string cache split", {"cache_creation": {"ephemeral_5m_input_tokens": "5"}}),
    ("negative api_calls", {"api_calls": -1}),
    ("empty id", {"id": ""}),
    ("id of 129 characters", {"id": "x" * 129}),
    ("numeric id", {"id": 12345}),
    ("no id", {"id": _DROP}),
    ("no model", {"model": _DROP}),
    ("naive timestamp", {"timestamp": "2026-06-15T12:00:00"}),
    ("numeric timestamp", {"timestamp": 1781524800}),
    ("date without time", {"timestamp": "2026-06-15"}),
    ("not a timestamp", {"timestamp": "yesterday"}),
    ("ISO week date, not RFC 3339", {"timestamp": "2026-W24-1T12:00:00Z"}),
    ("ISO basic format, not RFC 3339", {"timestamp": "20260615T120000Z"}),
    ("offset without colon", {"timestamp": "2026-06-15T12:00:00+0200"}),
    (
        "cache split that does not add up",
        {
            "cache_creation_input_tokens": 100,
            "cache_creation": {"ephemeral_5m_input_tokens": 60, "ephemeral_1h_input_tokens": 30},
        },
    ),
    ("unknown field", {"prompt_tokens": 5}),
    ("negative cost", {"cost_usd": "-0.01"}),
    ("boolean cost", {"cost_usd": True}),
    ("NaN cost", {"cost_usd": "NaN"}),
    ("infinite cost", {"cost_usd": "Infinity"}),
    ("cost that is not a number", {"cost_usd": "ten cents"}),
    ("cost below a nano-dollar", {"cost_usd": "0.0000000001"}),
    ("cost far below a nano-dollar", {"cost_usd": "1e-999999999"}),
    ("cost over the largest of one event", {"cost_usd": "1000000.000000001"}),
    ("a number as the timestamp", {"timestamp": 1781524800}),
    ("metadata over 4 KiB", {"metadata": {"blob": "x" * 5000}}),
    ("metadata that is not an object", {"metadata": ["a"]}),
    ("NUL in the id", {"id": "evt\x00"}),
    ("NUL in the model", {"model": "claude\x00"}),
    ("NUL in refresh_id", {"refresh_id": "run\x00"}),
    ("unknown organization", {"organization": "no-such-org"}),
    ("organization id beyond int64", {"organization": str(10**30)}),
    ("organization id number beyond int64", {"organization": 10**30}),
    ("organization id beyond int32", {"organization": 2**31}),
    ("organization of unicode digits", {"organization": "\u0661\u00b2"}),
]


def test_invalid_event_is_refused_naming_it_and_nothing_is_stored(
    client: TestClient,
    database: Database,
    service_headers: dict[str, str],
    make_tenant: Callable[..., Tenant],
) -> None:
    tenant = make_tenant({"valid_from": "2020-01-01T00:00:00Z"})
    ok(client, service_headers, event("seed", organization=tenant.slug))  # rollups exist
    before = snapshot(database)
    for case, fields in INVALID:
        bad = event("bad", organization=tenant.slug)
        bad.update(fields)
        bad = {name: value for name, value in bad.items() if value is not _DROP}
        response = post(
            client,
            service_headers,
            event("good-0", organization=tenant.slug),
            bad,
            event("good-2", organization=tenant.slug),
        )
        assert response.status_code == 422, (case, response.text)
        message = response.json()["error"]["message"]
        assert "events[1]" in message, (case, message)
        assert snapshot(database) == before, case
    assert set(stored_events(database)) == {"seed"}


def test_timestamps_in_the_future_or_too_old_are_refused(
    database_url: str, database: Database
) -> None:
    """Up to 5 minutes ahead (clock skew) and back to backfill_max_age_days (default 400),
    both ends included, counted from the app's now."""
    now = NOW  # 2026-11-18 12:00 UTC; 400 days before is 2025-10-14 12:00 UTC
    app = create_app(make_settings(database_url), clock=lambda: now)
    with write(database) as session:
        org = make_org(session, slug="clock")
        _key, secret = create_api_key(session, "clock", "clock", actor=None)
    headers = key_bearer(secret)
    with TestClient(app) as client:
        before = snapshot(database)
        for case, at in [
            ("a microsecond past 5 minutes ahead", now + timedelta(minutes=5, microseconds=1)),
            ("6 minutes ahead", now + timedelta(minutes=6)),
            ("a year ahead", now + timedelta(days=365)),
            ("a microsecond older than 400 days", now - timedelta(days=400, microseconds=1)),
            ("401 days old", now - timedelta(days=401)),
        ]:
            response = post(client, headers, event("ok"), event("t", timestamp=rfc3339(at)))
            assert response.status_code == 422, (case, response.text)
            assert "events[1].timestamp" in response.json()["error"]["message"], case
            assert snapshot(database) == before, case
        accepted = [
            event("ahead", timestamp=rfc3339(now + timedelta(minutes=5))),
            event("old", timestamp="2025-10-14T12:00:00Z"),  # exactly 400 days
            # Any offset: the same instant written in another zone.
            event("offset", timestamp=(now - timedelta(hours=1)).astimezone(PACIFIC).isoformat()),
            event("received"),  # no timestamp: the time of receipt
        ]
        accepted[-1].pop("timestamp")
        body = ok(client, headers, *accepted)
    assert [r["status"] for r in body["results"]] == ["created"] * 4
    stored = stored_events(database, org.id)
    assert stored["received"].timestamp == now
    assert stored["received"].received_at == now
    assert stored["old"].timestamp == now - timedelta(days=400)
    assert stored["ahead"].timestamp == now + timedelta(minutes=5)
    assert stored["offset"].timestamp == now - timedelta(hours=1)


def test_edges_that_are_valid(
    client: TestClient, database: Database, service_headers: dict[str, str]
) -> None:
    with write(database) as session:
        org = make_org(session, slug="edges")
    body = ok(
        client,
        service_headers,
        event("x" * 128, organization="edges", input_tokens=10**9, output_tokens=0),
        # by id, and with RFC 3339's lower-case t and z and a nanosecond fraction
        event("by-id", organization=org.id, timestamp="2026-06-15t12:00:00.123456789z"),
        event("by-id-text", organization=str(org.id), cost_usd="0.000000001"),
        # ten places, but the tenth is a zero: a whole number of nano-dollars
        event("padded", organization="edges", cost_usd="0.1000000000"),
    )
    assert [r["status"] for r in body["results"]] == ["created"] * 4
    assert body["results"][3]["cost_usd"] == "0.10"
    stored = stored_events(database, org.id)
    assert stored["x" * 128].input_tokens == 10**9
    assert stored["by-id"].timestamp.microsecond == 123456
    assert stored["by-id-text"].cost_nano == 1


def test_batch_size_is_1_to_1000(
    client: TestClient, database: Database, service_headers: dict[str, str]
) -> None:
    with write(database) as session:
        make_org(session, slug="sizes")
    response = client.post("/api/v1/usage", json={"events": []}, headers=service_headers)
    assert response.status_code == 422, response.text
    events = [event(f"e{i}", organization="sizes") for i in range(1001)]
    response = post(client, service_headers, *events)
    assert response.status_code == 422, response.text
    assert snapshot(database).events == 0
    response = client.post("/api/v1/usage", json={}, headers=service_headers)
    assert response.status_code == 422
    body = ok(client, service_headers, *events[:1000])
    assert len(body["results"]) == 1000
    assert snapshot(database).events == 1000


def test_body_over_max_body_bytes_is_413(database_url: str, database: Database) -> None:
    app = create_app(make_settings(database_url, max_body_bytes=4096))
    with write(database) as session:
        make_org(session, slug="capped")
        _key, secret = create_api_key(session, "capped", "capped", actor=None)
    small = [event(f"s{i}") for i in range(5)]
    large = [event(f"l{i}") for i in range(60)]
    with TestClient(app) as client:
        response = post(client, key_bearer(secret), *large)
        assert response.status_code == 413, response.text
        assert snapshot(database).events == 0
        ok(client, key_bearer(secret), *small)
    assert snapshot(database).events == 5


def test_service_key_must_name_the_organization(
    client: TestClient,
    database: Database,
    service_headers: dict[str, str],
    make_tenant: Callable[..., Tenant],
) -> None:
    tenant = make_tenant()
    response = post(client, service_headers, event("a", organization=tenant.slug), event("b"))
    assert response.status_code == 422, response.text
    assert "events[1].organization" in response.json()["error"]["message"]
    response = post(client, service_headers, event("only"))
    assert response.status_code == 422, response.text
    assert "events[0].organization" in response.json()["error"]["message"]
    assert snapshot(database).events == 0


def test_org_key_writes_only_its_own_organization(
    client: TestClient, database: Database, make_tenant: Callable[..., Tenant]
) -> None:
    mine, other = make_tenant(), make_tenant()
    response = post(client, mine.headers, event("a"), event("b", organization=other.slug))
    assert response.status_code == 403, response.text
    assert "events[1]" in response.json()["error"]["message"]
    response = post(client, mine.headers, event("c", organization=other.org_id))
    assert response.status_code == 403, response.text
    assert snapshot(database).events == 0

    body = ok(
        client,
        mine.headers,
        event("omitted"),
        event("by-slug", organization=mine.slug),
        event("by-id", organization=mine.org_id),
    )
    assert {r["organization"] for r in body["results"]} == {mine.slug}
    assert set(stored_events(database, mine.org_id)) == {"omitted", "by-slug", "by-id"}
    assert stored_events(database, other.org_id) == {}


@pytest.mark.parametrize("header", [None, "Bearer tl_not-a-key", "Bearer not-even-prefixed"])
def test_ingestion_needs_a_live_key(
    client: TestClient, database: Database, header: str | None
) -> None:
    headers = {"Authorization": header} if header else {}
    response = client.post("/api/v1/usage", json={"events": [event("a")]}, headers=headers)
    assert response.status_code == 401, response.text
    assert snapshot(database).events == 0


def test_a_retry_of_a_stored_event_is_a_duplicate_even_past_the_age_limit(
    database_url: str, database: Database
) -> None:
    """Idempotency wins over age: a client that was offline long gets `duplicate`, not 422."""
    with write(database) as session:
        make_org(session, slug="offline")
        _key, secret = create_api_key(session, "offline", "offline", actor=None)
    headers = key_bearer(secret)
    sent_at = "2026-10-20T12:00:00Z"  # 29 days before NOW
    stored = event("kept", timestamp=sent_at)
    # Stored while young enough (a 30-day limit) ...
    young = make_settings(database_url, backfill_max_age_days=30)
    with TestClient(create_app(young, clock=lambda: NOW)) as client:
        first = ok(client, headers, stored)
    assert first["results"][0]["status"] == "created"
    before = snapshot(database)
    # ... and retried 11 days later, when it is 40 days old: past the limit.
    later = NOW + timedelta(days=11)
    with TestClient(create_app(young, clock=lambda: later)) as client:
        retry = ok(client, headers, stored, stored)
        assert [r["status"] for r in retry["results"]] == ["duplicate", "duplicate"]
        assert retry["results"][0]["cost_usd"] == first["results"][0]["cost_usd"]
        assert snapshot(database) == before
        # The same old id with other content is still a conflict, and a new old event is
        # still refused: the whole batch, with the stored retry beside it.
        changed = post(client, headers, {**stored, "output_tokens": 999})
        assert changed.status_code == 409, changed.text
        new_old = post(client, headers, stored, event("new-old", timestamp=sent_at))
        assert new_old.status_code == 422, new_old.text
        assert "events[1].timestamp: older than 30 days" in new_old.json()["error"]["message"]
        assert snapshot(database) == before
