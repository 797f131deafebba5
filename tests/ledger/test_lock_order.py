"""PostgreSQL: every write path takes its locks in one order (db.py), so repricing, the
group commit of ingestion, budget changes and holds run side by side through the real
server without a deadlock; a transaction that loses one anyway is retried, never a 500.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, func, select, text
from sqlalchemy.orm import Session

from tests.conftest import NOW, FixedClock, Tenant, serving
from tests.ledger.conftest import LICENSE, usage_event, wait_until_blocked
from tokenledger.app import create_app
from tokenledger.audit.models import AuditEntry
from tokenledger.config import Settings
from tokenledger.db import Database
from tokenledger.ledger.reconcile import reconcile
from tokenledger.licenses.models import License
from tokenledger.usage.models import UsageEvent

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

SONNET = "/api/pricing/overrides/anthropic/claude-sonnet-4-5"
JUNE = {"model": "claude-sonnet-4-5", "from": "2026-06-01T00:00:00Z", "to": "2026-07-01T00:00:00Z"}


def test_reprice_ingest_budget_and_holds_run_together_without_deadlock(
    settings: Settings,
    database: Database,
    make_tenant: Callable[..., Tenant],
    service_headers: dict[str, str],
    admin_headers: dict[str, str],
) -> None:
    tenants = [make_tenant(LICENSE) for _ in range(4)]
    app = create_app(settings, clock=FixedClock(NOW))
    failures: list[str] = []
    acknowledged: set[tuple[str, str]] = set()
    stop = threading.Event()
    ids = itertools.count()

    def guarded(work: Callable[[str], None]) -> Callable[[str], None]:
        def run(url: str) -> None:
            try:
                work(url)
            except Exception as exc:
                failures.append(f"{work.__name__}: {exc!r}")
                stop.set()

        return run

    def check(response: httpx.Response, what: str) -> None:
        if response.status_code >= 500:
            failures.append(f"{what}: {response.status_code} {response.text[:200]}")

    def ingest(url: str) -> None:
        with httpx.Client(base_url=url, headers=service_headers, timeout=60) as http:
            while not stop.is_set():
                # Every organization in each batch, in a shuffled order of events: the
                # groups lock all four, and they reach the price rows a repricing moves.
                batch = []
                for tenant in reversed(tenants):
                    n = next(ids)
                    at = f"2026-06-{1 + n % 28:02d}T12:00:00Z"
                    batch.append(usage_event(f"e{n}", at, organization=tenant.slug))
                response = http.post("/api/v1/usage", json={"events": batch})
                check(response, "usage")
                if response.status_code == 200:
                    acknowledged.update((e["organization"], e["id"]) for e in batch)

    def reprice(url: str) -> None:
        with httpx.Client(base_url=url, headers=admin_headers, timeout=60) as http:
            rates = itertools.cycle(["100", "3"])
            while not stop.is_set():
                body = {"input": next(rates), "output": "15", "valid_from": "2026-01-01T00:00:00Z"}
                check(http.put(SONNET, json=body), "override")
                check(http.post("/api/pricing/reprice", json=JUNE), "reprice")

    def budgets(url: str) -> None:
        with httpx.Client(base_url=url, headers=admin_headers, timeout=60) as http:
            amounts = itertools.cycle(["500", "900"])
            while not stop.is_set():
                for tenant in tenants:
                    response = http.put(
                        f"/api/token-usage/budget/{tenant.license_id}",
                        json={"token_budget_usd": next(amounts), "credits_total": next(amounts)},
                    )
                    check(response, "budget")

    def holds(url: str) -> None:
        with httpx.Client(base_url=url, headers=service_headers, timeout=60) as http:
            while not stop.is_set():
                for tenant in tenants:
                    response = http.post(
                        "/api/v1/reservations",
                        json={"organization": tenant.slug, "max_cost_usd": "0.01"},
                    )
                    check(response, "reservation")

    deadlocks_before = _deadlocks(database)
    with serving(app) as url:
        # Events to reprice before the load starts.
        with httpx.Client(base_url=url, headers=service_headers, timeout=60) as http:
            for tenant in tenants:
                batch = [
                    usage_event(f"seed-{i}", f"2026-06-{1 + i % 28:02d}T08:00:00Z")
                    for i in range(200)
                ]
                response = http.post(
                    "/api/v1/usage",
                    json={"events": [{**e, "organization": tenant.slug} for e in batch]},
                )
                assert response.status_code == 200, response.text
        workers = [
            *(threading.Thread(target=guarded(ingest), args=(url,)) for _ in range(3)),
            threading.Thread(target=guarded(reprice), args=(url,)),
            threading.Thread(target=guarded(budgets), args=(url,)),
            threading.Thread(target=guarded(holds), args=(url,)),
        ]
        for worker in workers:
            worker.start()
        time.sleep(5)
        stop.set()
        for worker in workers:
            worker.join(timeout=120)
    assert failures == []
    # One lock order everywhere: not a deadlock to retry, not one (the retries are for
    # what no order rules out, and would hide them).
    database.dispose()
    assert _deadlocks(database) == deadlocks_before
    with database.session(write=False) as session:
        stored = session.scalar(select(func.count()).select_from(UsageEvent))
    assert stored == len(acknowledged) + 4 * 200
    with database.session(write=True) as session:
        assert reconcile(session, fix=False) == []


def _deadlocks(database: Database) -> int:
    """Deadlocks PostgreSQL detected in this database so far (pg_stat_database)."""
    time.sleep(1.2)  # backends flush their counts at most once a second
    with database.engine.connect() as connection:
        count = connection.execute(
            text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        ).scalar()
    return int(count or 0)


def _lock_row(connection: Connection, table: str, row_id: int) -> None:
    connection.execute(text(f"SELECT id FROM {table} WHERE id = :id FOR UPDATE"), {"id": row_id})


def test_a_transaction_that_loses_a_deadlock_is_run_again(
    database: Database, make_tenant: Callable[..., Tenant]
) -> None:
    first, second = make_tenant(LICENSE), make_tenant(LICENSE)
    attempts: list[int] = []
    work_holds_first = threading.Event()
    other_holds_second = threading.Event()

    def work(session: Session) -> int:
        attempts.append(1)
        _lock_row(session.connection(), "organizations", first.org_id)
        if len(attempts) == 1:
            work_holds_first.set()
            other_holds_second.wait(10)
        _lock_row(session.connection(), "organizations", second.org_id)
        return len(attempts)

    def other() -> None:
        # The reverse order; it waits second, so PostgreSQL picks `work` as the victim.
        with database.engine.connect() as connection, connection.begin():
            work_holds_first.wait(10)
            _lock_row(connection, "organizations", second.org_id)
            other_holds_second.set()
            time.sleep(0.3)
            _lock_row(connection, "organizations", first.org_id)

    thread = threading.Thread(target=other)
    thread.start()
    # Lost at least once (on a loaded machine the retry may meet the other again), then
    # committed.
    assert database.run_write(work) >= 2
    thread.join(timeout=30)


def test_a_request_that_loses_a_deadlock_is_served_again(
    client: TestClient,
    database: Database,
    make_tenant: Callable[..., Tenant],
    admin_headers: dict[str, str],
) -> None:
    """A budget PUT locks the organization, then the license; a transaction of another
    program holding the license and then taking the organization deadlocks with it. The
    request is served again (RetryConflicts) and answers 200, its change stored once."""
    tenant = make_tenant(LICENSE)
    answer: list[int] = []
    connection = database.engine.connect()
    transaction = connection.begin()
    try:
        _lock_row(connection, "licenses", tenant.license_id)

        def put() -> None:
            response = client.put(
                f"/api/token-usage/budget/{tenant.license_id}",
                json={"token_budget_usd": "123"},
                headers=admin_headers,
            )
            answer.append(response.status_code)

        thread = threading.Thread(target=put)
        thread.start()
        wait_until_blocked(database)  # the PUT holds the organization, waits for the license
        _lock_row(connection, "organizations", tenant.org_id)  # the cycle: the PUT loses
        transaction.commit()
    finally:
        connection.close()
    thread.join(timeout=60)
    assert answer == [200]
    with database.session(write=False) as session:
        budget = session.scalar(
            select(License.token_budget_nano).where(License.id == tenant.license_id)
        )
        updates = session.scalar(
            select(func.count())
            .select_from(AuditEntry)
            .where(AuditEntry.action == "license.budget_update")
        )
    assert (budget, updates) == (123 * 10**9, 1)
