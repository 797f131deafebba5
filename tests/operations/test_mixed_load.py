"""A mixed load on a two-worker `tokenledger serve` on PostgreSQL: ingestion, repricing,
budget changes and price overrides at once, with a kill -9 midway and a restart.

Every acknowledged event is stored once (and the unacknowledged ones, sent again after
the restart, too), no request is answered 5xx, and `reconcile` finds no drift.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from tests.conftest import Tenant, add_admin, admin_bearer, new_tenant
from tests.operations.conftest import Server
from tokenledger.db import Database
from tokenledger.ledger.reconcile import reconcile
from tokenledger.organizations.models import Organization
from tokenledger.usage.models import UsageEvent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize("database_url", ["postgresql"], indirect=True),
]

SECONDS_BEFORE_KILL = 5
SECONDS_AFTER_RESTART = 4
SONNET = "/api/pricing/overrides/anthropic/claude-sonnet-4-5"
# One day of the load's June: a bounded share of the events, repriced over and over.
JUNE_1 = {
    "model": "claude-sonnet-4-5",
    "from": "2026-06-01T00:00:00Z",
    "to": "2026-06-02T00:00:00Z",
}


def _event(event_id: str, n: int) -> dict[str, object]:
    return {
        "id": event_id,
        "timestamp": f"2026-06-{1 + n % 28:02d}T12:00:00Z",
        "model": "claude-sonnet-4-5",
        "input_tokens": 1000 + n % 7,
        "output_tokens": 100,
    }


def test_mixed_load_with_a_kill_midway(database: Database, server_root: Path) -> None:
    tenants = [
        new_tenant(database, {"valid_from": datetime(2026, 1, 1, tzinfo=UTC)}) for _ in range(4)
    ]
    admin = admin_bearer(add_admin(database, "load@example.com"))
    server = Server(database.url, server_root, workers=2)
    server.start()

    sent: dict[tuple[int, str], dict[str, object]] = {}  # (organization, id): event
    acknowledged: set[tuple[int, str]] = set()
    errors: list[str] = []
    stop = threading.Event()
    numbers = itertools.count()
    lock = threading.Lock()

    def answered(response: httpx.Response, what: str) -> bool:
        if response.status_code >= 500:
            errors.append(f"{what}: {response.status_code} {response.text[:200]}")
        return response.status_code < 300

    def loop(work: Callable[[httpx.Client], None]) -> Callable[[], None]:
        def run() -> None:
            with httpx.Client(timeout=60) as http:
                while not stop.is_set():
                    try:
                        work(http)
                    except httpx.TransportError:
                        time.sleep(0.05)  # the server is down: try again

        return run

    def ingest(tenant: Tenant) -> Callable[[httpx.Client], None]:
        pending: list[dict[str, object]] = []  # sent without an answer: sent again

        def work(http: httpx.Client) -> None:
            if not pending:
                for _ in range(20):
                    n = next(numbers)
                    pending.append(_event(f"load-{n}", n))
                with lock:
                    sent.update({(tenant.org_id, str(e["id"])): e for e in pending})
            response = http.post(
                f"{server.url}/api/v1/usage", json={"events": pending}, headers=tenant.headers
            )
            if answered(response, "usage"):
                with lock:
                    acknowledged.update((tenant.org_id, str(e["id"])) for e in pending)
            pending.clear()

        return work

    rates = itertools.cycle(["3", "4"])

    def reprice(http: httpx.Client) -> None:
        body = {"input": next(rates), "output": "15", "valid_from": "2026-01-01T00:00:00Z"}
        answered(http.put(f"{server.url}{SONNET}", json=body, headers=admin), "override")
        answered(
            http.post(f"{server.url}/api/pricing/reprice", json=JUNE_1, headers=admin), "reprice"
        )

    amounts = itertools.cycle(["500", "900"])

    def budgets(http: httpx.Client) -> None:
        for tenant in tenants:
            response = http.put(
                f"{server.url}/api/token-usage/budget/{tenant.license_id}",
                json={"token_budget_usd": next(amounts)},
                headers=admin,
            )
            answered(response, "budget")

    models = itertools.count()

    def overrides(http: httpx.Client) -> None:
        # Two overlapping overrides of a new model at once: one stored, one 409.
        path = f"{server.url}/api/pricing/overrides/anthropic/load-model-{next(models)}"
        bodies = [
            {"input": "1", "output": "2", "valid_from": "2026-01-01T00:00:00Z"},
            {"input": "3", "output": "4", "valid_from": "2025-01-01T00:00:00Z"},
        ]

        def put(body: dict[str, str]) -> None:
            with contextlib.suppress(httpx.TransportError):  # the server is down
                answered(http.put(path, json=body, headers=admin), "overlap")

        threads = [threading.Thread(target=put, args=(body,)) for body in bodies]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    workers = [
        *(threading.Thread(target=loop(ingest(tenant))) for tenant in tenants),
        threading.Thread(target=loop(reprice)),
        threading.Thread(target=loop(budgets)),
        threading.Thread(target=loop(overrides)),
    ]
    try:
        for worker in workers:
            worker.start()
        time.sleep(SECONDS_BEFORE_KILL)
        server.kill()
        server.start()
        time.sleep(SECONDS_AFTER_RESTART)
        stop.set()
        for worker in workers:
            worker.join(timeout=120)
        # What the kill cut off, once more: stored once, whether or not it was before.
        with httpx.Client(timeout=60) as http:
            for tenant in tenants:
                missing = [
                    event
                    for key, event in sent.items()
                    if key[0] == tenant.org_id and key not in acknowledged
                ]
                if missing:  # at most the batch each poster had in flight
                    response = http.post(
                        f"{server.url}/api/v1/usage",
                        json={"events": missing},
                        headers=tenant.headers,
                    )
                    assert response.status_code == 200, response.text
    finally:
        stop.set()
        server.stop()
    assert errors == []
    assert acknowledged
    with database.session(write=False) as session:
        stored = session.execute(
            select(UsageEvent.organization_id, UsageEvent.external_id).join(Organization)
        ).all()
    keys = [(org, external) for org, external in stored]
    assert len(keys) == len(set(keys))  # none twice
    assert set(keys) == set(sent)  # every one sent, acknowledged first or not, once
    with database.session(write=True) as session:
        assert reconcile(session, fix=False) == []
