"""Refresh runs: completed runs count once, in the billing month of their finished_at."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi.testclient import TestClient

from tests.conftest import NOW, FixedClock, Tenant
from tests.ledger.conftest import credits_used_micro, monthly_rows, ok, wait_until_blocked
from tokenledger.config import Settings
from tokenledger.db import Database
from tokenledger.ledger.reconcile import reconcile
from tokenledger.ledger.refreshes import record_refresh
from tokenledger.ledger.service import record_batch as ingest
from tokenledger.organizations.models import Organization
from tokenledger.usage.schemas import RefreshIn, UsageBatch


def put(client: TestClient, headers: dict[str, str], refresh_id: str, **body: Any) -> Any:
    return client.put(f"/api/v1/refreshes/{refresh_id}", json=body, headers=headers)


def counts(database: Database, org_id: int) -> dict[str, int]:
    return {
        month: row["refresh_count"]
        for month, row in monthly_rows(database, org_id).items()
        if row["refresh_count"]
    }


def test_completed_runs_count_once_in_the_month_they_finished(
    berlin_client: TestClient,
    clock: FixedClock,
    database: Database,
    make_tenant: Callable[..., Tenant],
) -> None:
    client = berlin_client
    tenant = make_tenant()
    headers = tenant.headers

    def status(refresh_id: str, **body: Any) -> dict[str, Any]:
        response = put(client, headers, refresh_id, **body)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    started = status("r1", status="running", started_at="2026-03-31T20:00:00Z")
    assert started["counted_month"] is None
    assert counts(database, tenant.org_id) == {}

    # 22:30Z on 31 March is 00:30 on 1 April in Berlin
    done = status("r1", status="completed", finished_at="2026-03-31T22:30:00Z")
    assert done["counted_month"] == "2026-04"
    assert counts(database, tenant.org_id) == {"2026-04": 1}
    status("r1", status="completed", finished_at="2026-03-31T22:30:00Z")  # reported twice
    status("r1", status="completed")  # again, without finished_at: the same run
    assert counts(database, tenant.org_id) == {"2026-04": 1}

    status("r1", status="failed")  # completed -> failed takes it back
    assert counts(database, tenant.org_id) == {}
    status("r1", status="completed", finished_at="2026-05-01T00:00:00+02:00")
    assert counts(database, tenant.org_id) == {"2026-05": 1}

    status("r2", status="completed", finished_at="2026-03-31T21:59:59Z")  # 23:59:59 CEST
    status("r3", status="completed", finished_at="2026-10-31T23:30:00Z")  # November in CET
    status("r4", status="failed", finished_at="2026-05-10T00:00:00Z")
    status("r5", status="running")
    assert counts(database, tenant.org_id) == {"2026-03": 1, "2026-05": 1, "2026-11": 1}

    # completed without finished_at: finished at the app's now, in its billing month. At
    # 23:30Z on 30 November it is 00:30 on 1 December in Berlin.
    clock.now = datetime(2026, 11, 30, 23, 30, tzinfo=UTC)
    finished = status("r6", status="completed")
    assert datetime.fromisoformat(finished["finished_at"]) == clock.now
    assert finished["counted_month"] == "2026-12"
    assert counts(database, tenant.org_id) == {
        "2026-03": 1,
        "2026-05": 1,
        "2026-11": 1,
        "2026-12": 1,
    }

    with database.session(write=False) as session:
        assert reconcile(session, fix=False) == []


def test_failed_runs_usage_still_counts(
    client: TestClient, database: Database, make_tenant: Callable[..., Tenant]
) -> None:
    tenant = make_tenant({"valid_from": "2026-01-01T00:00:00Z", "cost_per_credit": "0.01"})
    events = [
        {
            "id": f"call-{n}",
            "timestamp": "2026-06-15T12:00:00Z",
            "model": "claude-sonnet-4-5",
            "refresh_id": run,
            "cost_usd": "0.10",
        }
        for n, run in enumerate(["ok-run", "ok-run", "bad-run"])
    ]
    ok(client, tenant.headers, *events)
    assert (
        put(
            client, tenant.headers, "ok-run", status="completed", finished_at="2026-06-15T12:05:00Z"
        ).status_code
        == 200
    )
    assert (
        put(
            client, tenant.headers, "bad-run", status="failed", finished_at="2026-06-15T12:05:00Z"
        ).status_code
        == 200
    )
    row = monthly_rows(database, tenant.org_id)["2026-06"]
    assert row["cost_nano"] == 300_000_000  # all three calls were paid for
    assert row["refresh_count"] == 1
    assert row["api_calls"] == 3
    assert credits_used_micro(database, tenant.license_id) == 30_000_000


def test_refresh_requests_are_checked(
    client: TestClient,
    database: Database,
    service_headers: dict[str, str],
    make_tenant: Callable[..., Tenant],
) -> None:
    mine, other = make_tenant(), make_tenant()
    for headers, refresh_id, body, code in [
        (service_headers, "r", {"status": "completed"}, 422),  # which organization?
        (service_headers, "r", {"organization": "nobody", "status": "completed"}, 404),
        (mine.headers, "r", {"organization": other.slug, "status": "completed"}, 403),
        (mine.headers, "r", {"status": "done"}, 422),
        (mine.headers, "r", {"status": "completed", "finished_at": "2026-06-15T12:00:00"}, 422),
        (mine.headers, "r", {"status": "completed", "finished_at": 1781524800}, 422),
        (
            mine.headers,
            "r",
            {
                "status": "completed",
                "started_at": "2026-06-15T12:00:00Z",
                "finished_at": "2026-06-15T11:00:00Z",
            },
            422,
        ),
        (mine.headers, "x" * 129, {"status": "completed"}, 422),
        (mine.headers, "r%00", {"status": "completed"}, 422),  # NUL: PostgreSQL has no room
        (mine.headers, "r", {"organization": "a\x00", "status": "completed"}, 422),
        ({}, "r", {"status": "completed"}, 401),
    ]:
        response = put(client, headers, refresh_id, **body)
        assert response.status_code == code, (body, response.text)
    assert counts(database, mine.org_id) == {}
    assert counts(database, other.org_id) == {}

    response = put(
        client,
        service_headers,
        "r",
        organization=other.org_id,
        status="completed",
        finished_at="2026-06-15T12:00:00Z",
    )
    assert response.status_code == 200, response.text
    assert response.json()["organization"] == other.slug
    assert counts(database, other.org_id) == {"2026-06": 1}
    # the same run id in another organization is another run
    assert (
        put(
            client, mine.headers, "r", status="completed", finished_at="2026-06-15T12:00:00Z"
        ).status_code
        == 200
    )
    assert counts(database, mine.org_id) == {"2026-06": 1}
    assert counts(database, other.org_id) == {"2026-06": 1}


def test_a_run_moving_to_an_earlier_month_takes_months_in_order(
    client: TestClient,
    settings: Settings,
    database: Database,
    make_tenant: Callable[..., Tenant],
) -> None:
    """A run re-reported into an earlier month, while a batch holds both months' rows.

    The batch (one transaction) has added to May and will add to June; the run moves from
    June to May. Taking June first, the run would wait for May while holding June: a
    deadlock with the batch on PostgreSQL.
    """
    tenant = make_tenant()
    ok(
        client,
        tenant.headers,
        {"id": "may", "timestamp": "2026-05-10T00:00:00Z", "model": "m", "cost_usd": "1"},
        {"id": "june", "timestamp": "2026-06-10T00:00:00Z", "model": "m", "cost_usd": "1"},
    )
    response = put(
        client, tenant.headers, "r", status="completed", finished_at="2026-06-15T00:00:00Z"
    )
    assert response.status_code == 200, response.text

    def batch(id: str, at: str) -> UsageBatch:
        event = {"id": id, "organization": tenant.slug, "timestamp": at, "model": "m"}
        return UsageBatch.model_validate({"events": [event]})

    failures: list[BaseException] = []

    def move_run() -> None:
        try:
            with database.session(write=True) as session:
                org = session.get(Organization, tenant.org_id)
                assert org is not None
                data = RefreshIn(status="completed", finished_at="2026-05-15T00:00:00Z")
                record_refresh(session, org, "r", data, settings.timezone, NOW)
        except BaseException as exc:
            failures.append(exc)

    with database.session(write=True) as session:
        ingest(
            session,
            batch("may-2", "2026-05-11T00:00:00Z"),
            key_org_id=None,
            settings=settings,
            now=NOW,
        )
        thread = threading.Thread(target=move_run)
        thread.start()
        wait_until_blocked(database)
        ingest(
            session,
            batch("june-2", "2026-06-11T00:00:00Z"),
            key_org_id=None,
            settings=settings,
            now=NOW,
        )
    thread.join(timeout=30)
    assert failures == []
    assert counts(database, tenant.org_id) == {"2026-05": 1}
    with database.session(write=False) as session:
        assert reconcile(session, fix=False) == []
