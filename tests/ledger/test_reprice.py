"""Repricing: unpriced events (or a corrected range) priced with the price now in force at
their timestamps; rollups, balances and alerts move with them; dry run; audit; reconcile.

Expected figures are worked out by hand from the rates (USD per million tokens) and the
license's 0.01 USD per credit.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.conftest import Tenant
from tests.ledger.conftest import (
    LICENSE,
    cli,
    credits_used_micro,
    monthly_rows,
    ok,
    snapshot,
    stored_events,
)
from tests.ledger.conftest import bare_event as event
from tokenledger.alerts.models import Alert
from tokenledger.audit.models import AuditEntry
from tokenledger.db import Database
from tokenledger.ledger.reconcile import reconcile

IMAGINARY = "/api/pricing/overrides/anthropic/claude-imaginary-9"
SONNET = "/api/pricing/overrides/anthropic/claude-sonnet-4-5"


def reprice(client: TestClient, headers: dict[str, str], **body: Any) -> Any:
    return client.post("/api/pricing/reprice", json=body, headers=headers)


def drift(database: Database) -> list[str]:
    with database.session(write=True) as session:
        return reconcile(session, fix=False)


def audit_entries(database: Database) -> list[AuditEntry]:
    with database.session(write=False) as session:
        return list(
            session.scalars(
                select(AuditEntry)
                .where(AuditEntry.action == "pricing.reprice")
                .order_by(AuditEntry.id)
            ).all()
        )


def test_unpriced_events_are_priced_by_the_price_in_force_at_their_time(
    client: TestClient,
    database: Database,
    make_tenant: Callable[..., Tenant],
    admin_headers: dict[str, str],
    viewer_headers: dict[str, str],
) -> None:
    tenant = make_tenant(LICENSE)
    imaginary = {"model": "claude-imaginary-9"}
    ok(
        client,
        tenant.headers,
        event("march", "2026-03-15T12:00:00Z", **imaginary, input_tokens=1000, output_tokens=100),
        event("june", "2026-06-15T12:00:00Z", **imaginary, input_tokens=2000),
        # priced by the caller: never repriced
        event("caller", "2026-03-15T12:00:00Z", **imaginary, input_tokens=5, cost_usd="0.5"),
        # priced from the bundled data: not unpriced, left alone
        event("sonnet", "2026-06-15T12:00:00Z", input_tokens=1000, output_tokens=100),
    )
    assert drift(database) == []
    for body in (
        {"input": "10", "output": "20", "valid_from": "2026-01-01T00:00:00Z"},
        {"input": "1", "output": "2", "valid_from": "2026-05-01T00:00:00Z"},
    ):
        response = client.put(IMAGINARY, json=body, headers=admin_headers)
        assert response.status_code == 200, response.text
    before = snapshot(database)
    months_before = monthly_rows(database, tenant.org_id)
    used_before = credits_used_micro(database, tenant.license_id)

    assert reprice(client, viewer_headers, unpriced=True).status_code == 403
    dry = reprice(client, admin_headers, unpriced=True, dry_run=True)
    assert dry.status_code == 200, dry.text
    # march: 1000*10 + 100*20 = 12000 µ$; june: 2000*1 = 2000 µ$ (the May price)
    expected = {
        "dry_run": True,
        "selection": "unpriced",
        "examined": 2,
        "changed": 2,
        "before": {"cost_usd": "0.00", "credits": "0.0", "unpriced_events": 2},
        "after": {"cost_usd": "0.014", "credits": "1.4", "unpriced_events": 0},
        "organizations": [
            {
                "organization_id": tenant.org_id,
                "organization": tenant.slug,
                "events": 2,
                "before": {"cost_usd": "0.00", "credits": "0.0", "unpriced_events": 2},
                "after": {"cost_usd": "0.014", "credits": "1.4", "unpriced_events": 0},
            }
        ],
        "new_alerts": 0,
    }
    assert dry.json() == expected
    assert snapshot(database) == before  # a dry run changes nothing
    assert audit_entries(database) == []

    done = reprice(client, admin_headers, unpriced=True)
    assert done.status_code == 200, done.text
    assert done.json() == {**expected, "dry_run": False}
    stored = stored_events(database, tenant.org_id)
    assert (stored["march"].cost_nano, stored["march"].credits_micro) == (12_000_000, 1_200_000)
    assert (stored["june"].cost_nano, stored["june"].credits_micro) == (2_000_000, 200_000)
    assert stored["march"].pricing == stored["june"].pricing == "priced"
    assert stored["march"].price_source == "override"
    assert stored["march"].rates["input"] == "10"
    assert stored["caller"].cost_nano == 500_000_000
    assert stored["caller"].price_source == "caller"
    assert stored["sonnet"].cost_nano == 4_500_000
    # Rollups and the balance moved by exactly the new costs.
    months = monthly_rows(database, tenant.org_id)
    for month, cost in (("2026-03", 12_000_000), ("2026-06", 2_000_000)):
        assert months[month]["cost_nano"] - months_before[month]["cost_nano"] == cost
        assert months_before[month]["unpriced_events"] - months[month]["unpriced_events"] == 1
        assert months[month]["event_count"] == months_before[month]["event_count"]
    assert credits_used_micro(database, tenant.license_id) - used_before == 1_400_000
    assert drift(database) == []
    [entry] = audit_entries(database)
    assert entry.actor == "admin@example.com"
    assert entry.before == {
        "selection": "unpriced",
        "cost_usd": "0.00",
        "credits": "0.0",
        "unpriced_events": 2,
    }
    assert entry.after is not None
    assert (entry.after["cost_usd"], entry.after["events"]) == ("0.014", 2)

    again = reprice(client, admin_headers, unpriced=True)
    assert (again.json()["examined"], again.json()["changed"]) == (0, 0)
    assert len(audit_entries(database)) == 1


def test_a_corrected_range_moves_balances_and_alerts_both_ways(
    client: TestClient,
    database: Database,
    make_tenant: Callable[..., Tenant],
    admin_headers: dict[str, str],
) -> None:
    # 10 credits at 0.01 USD: 0.10 USD; no USD budget.
    tenant = make_tenant({**LICENSE, "credits_total": Decimal(10), "token_budget_usd": None})
    tokens = {"input_tokens": 1000, "output_tokens": 100}  # bundled: 4500 µ$, 0.45 credits
    ok(
        client,
        tenant.headers,
        event("may", "2026-05-15T12:00:00Z", **tokens),
        event("june", "2026-06-15T12:00:00Z", **tokens),
    )
    # The price was in fact 1000*100 + 100*200 = 120000 µ$ a call from May on (12 credits).
    response = client.put(
        SONNET,
        json={"input": "100", "output": "200", "valid_from": "2026-05-01T00:00:00Z"},
        headers=admin_headers,
    )
    assert response.status_code == 200, response.text
    june = {"model": "claude-sonnet-4-5", "from": "2026-06-01T00:00:00Z"}
    june["to"] = "2026-07-01T00:00:00Z"
    done = reprice(client, admin_headers, **june)
    assert done.status_code == 200, done.text
    body = done.json()
    assert (body["examined"], body["changed"]) == (1, 1)
    assert body["before"]["cost_usd"] == "0.0045"
    assert body["after"]["cost_usd"] == "0.12"
    assert body["new_alerts"] == 2
    stored = stored_events(database, tenant.org_id)
    assert stored["june"].cost_nano == 120_000_000
    assert stored["may"].cost_nano == 4_500_000  # outside the range: as it was
    # 0.45 + 12 credits used of 10: warning and exhausted, in the repricing's transaction.
    assert credits_used_micro(database, tenant.license_id) == 12_450_000
    with database.session(write=False) as session:
        fired = session.execute(
            select(Alert.type, Alert.rearmed_at).where(Alert.license_id == tenant.license_id)
        ).all()
    assert sorted((t, r is None) for t, r in fired) == [
        ("credits.exhausted", True),
        ("credits.warning", True),
    ]
    assert drift(database) == []

    # The correction was wrong: back to the bundled price, and the alerts re-arm.
    assert client.delete(SONNET, headers=admin_headers).status_code == 204
    back = reprice(client, admin_headers, **june)
    assert back.json()["after"]["cost_usd"] == "0.0045"
    assert credits_used_micro(database, tenant.license_id) == 900_000
    with database.session(write=False) as session:
        armed = session.scalars(
            select(Alert.type).where(
                Alert.license_id == tenant.license_id, Alert.rearmed_at.is_(None)
            )
        ).all()
    assert armed == []
    assert drift(database) == []


@pytest.mark.parametrize(
    "body",
    [
        {},
        {
            "unpriced": True,
            "model": "x",
            "from": "2026-01-01T00:00:00Z",
            "to": "2026-02-01T00:00:00Z",
        },
        {"model": "x", "from": "2026-01-01T00:00:00Z"},
        {"model": "x", "from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
        {"model": "x", "from": "2026-01-01", "to": "2026-02-01T00:00:00Z"},
    ],
)
def test_a_repricing_needs_one_clear_selection(
    client: TestClient, admin_headers: dict[str, str], body: dict[str, Any]
) -> None:
    response = reprice(client, admin_headers, **body)
    assert response.status_code == 422, response.text


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_reprice_cli(
    database_url: str,
    client: TestClient,
    database: Database,
    make_tenant: Callable[..., Tenant],
    admin_headers: dict[str, str],
    tmp_path: Path,
) -> None:
    tenant = make_tenant(LICENSE)
    ok(client, tenant.headers, event("u", model="claude-imaginary-9", input_tokens=1000))
    set_price = [
        "prices", "set", "--model", "claude-imaginary-9", "--input", "10", "--output", "20",
        "--valid-from", "2026-01-01",
    ]  # fmt: skip
    assert cli(database_url, tmp_path, *set_price).returncode == 0
    dry = cli(database_url, tmp_path, "reprice", "--unpriced", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        "dry run, nothing changed: 1 of 1 events of unpriced would change",
        f"  {tenant.slug}: 1 events, 0.00 -> 0.01 USD, 0.0 -> 1.0 credits, unpriced 1 -> 0",
        "total: 0.00 -> 0.01 USD, unpriced 1 -> 0",
    ]
    assert stored_events(database)["u"].cost_nano is None
    done = cli(database_url, tmp_path, "reprice", "--unpriced")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "1 of 1 events of unpriced repriced"
    assert stored_events(database)["u"].cost_nano == 10_000_000
    refused = cli(database_url, tmp_path, "reprice", "--model", "claude-imaginary-9")
    assert refused.returncode == 1
    assert refused.stderr.strip() == "tokenledger: a range needs model, from and to"
    assert cli(database_url, tmp_path, "reprice").returncode == 2  # argparse: one is required
