"""usage_utc_daily: per organization, UTC day, provider and model, exactly the sums of its
events, kept by ingestion and repricing, checked by reconcile, built by its migration.

The ledger bills in Europe/Berlin (UTC+1 in November): 23:30 UTC on the 15th is the 16th
on the ledger's other pages and the 15th here. Costs by hand, claude-sonnet-4-5 at $3 in,
$15 out, $3.75 5-minute and $6 1-hour cache writes, $0.30 cache reads per million tokens
(3000, 15000, 3750, 6000 and 300 nano-USD a token).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import UTC

from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from tests.conftest import Tenant
from tests.ledger.conftest import bare_event as event
from tests.ledger.conftest import ok, stored_events
from tokenledger.db import Database
from tokenledger.ledger.reconcile import reconcile
from tokenledger.migrations import runner
from tokenledger.usage.models import UTC_ROLLUP_FIELDS, UsageDaily, UsageUtcDaily

SONNET, IMAGINARY = "claude-sonnet-4-5", "claude-imaginary-9"
EVENTS = [
    # 23:30 in Berlin on the 15th: 1000 x 3000 + 100 x 15000 + 400 x 3750 + 200 x 6000
    # + 1000 x 300 = 3,000,000 + 1,500,000 + 1,500,000 + 1,200,000 + 300,000 = 7,500,000
    event(
        "a",
        "2026-11-15T22:30:00Z",
        input_tokens=1000,
        output_tokens=100,
        cache_creation_input_tokens=600,
        cache_creation={"ephemeral_5m_input_tokens": 400, "ephemeral_1h_input_tokens": 200},
        cache_read_input_tokens=1000,
    ),
    # 00:30 on the 16th in Berlin, still the 15th in UTC: 2000 x 3000 = 6,000,000
    event("b", "2026-11-15T23:30:00Z", input_tokens=2000),
    # the 16th on both clocks; a model without a price: unpriced
    event("c", "2026-11-16T00:30:00Z", model=IMAGINARY, input_tokens=1000, output_tokens=100),
    # priced by the caller: 0.25 USD
    event("d", "2026-11-16T12:00:00Z", input_tokens=10, output_tokens=10, cost_usd="0.25"),
]
# (day, model): the fields of UTC_ROLLUP_FIELDS, by hand from EVENTS.
EXPECTED = {
    ("2026-11-15", SONNET): (3000, 400, 200, 1000, 100, 13_500_000, 2, 0),  # a + b
    ("2026-11-16", IMAGINARY): (1000, 0, 0, 0, 100, 0, 1, 1),  # c
    ("2026-11-16", SONNET): (10, 0, 0, 0, 10, 250_000_000, 1, 0),  # d
}


def utc_rows(database: Database, org_id: int) -> dict[tuple[str, str], tuple[int, ...]]:
    with database.session(write=False) as session:
        rows = session.scalars(
            select(UsageUtcDaily).where(UsageUtcDaily.organization_id == org_id)
        ).all()
        assert {row.provider for row in rows} <= {"anthropic"}
        return {
            (row.day, row.model): tuple(getattr(row, name) for name in UTC_ROLLUP_FIELDS)
            for row in rows
        }


def sums_of_stored_events(database: Database, org_id: int) -> dict[tuple[str, str], list[int]]:
    """The same sums, added up here from the stored events' own fields."""
    sums: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * 8)
    for stored in stored_events(database, org_id).values():
        row = sums[(stored.timestamp.astimezone(UTC).date().isoformat(), stored.model)]
        row[0] += stored.input_tokens
        row[1] += stored.cache_creation_input_tokens - stored.cache_write_1h_tokens
        row[2] += stored.cache_write_1h_tokens
        row[3] += stored.cache_read_input_tokens
        row[4] += stored.output_tokens
        row[5] += stored.cost_nano or 0
        row[6] += 1
        row[7] += stored.pricing in ("unpriced", "partially_priced")
    return dict(sums)


def drift(database: Database) -> list[str]:
    with database.session(write=True) as session:
        return reconcile(session, fix=False)


def test_utc_days_differ_from_billing_days_and_equal_the_sums_of_their_events(
    berlin_client: TestClient, database: Database, make_tenant: Callable[..., Tenant]
) -> None:
    tenant = make_tenant()
    ok(berlin_client, tenant.headers, *EVENTS[:2])
    ok(berlin_client, tenant.headers, *EVENTS[2:])  # a second group adds to the first's rows
    assert utc_rows(database, tenant.org_id) == EXPECTED
    assert {
        key: tuple(values) for key, values in sums_of_stored_events(database, tenant.org_id).items()
    } == EXPECTED
    with database.session(write=False) as session:
        berlin_days = {
            (row.day, row.model): row.event_count
            for row in session.scalars(
                select(UsageDaily).where(UsageDaily.organization_id == tenant.org_id)
            )
        }
    # The billing days: b is the 16th there, a the 15th.
    assert berlin_days == {
        ("2026-11-15", SONNET): 1,
        ("2026-11-16", SONNET): 2,
        ("2026-11-16", IMAGINARY): 1,
    }
    assert drift(database) == []


def test_repricing_moves_the_utc_rollup_with_its_events(
    berlin_client: TestClient,
    database: Database,
    make_tenant: Callable[..., Tenant],
    admin_headers: dict[str, str],
) -> None:
    tenant = make_tenant()
    ok(berlin_client, tenant.headers, *EVENTS)
    price = berlin_client.put(
        f"/api/pricing/overrides/anthropic/{IMAGINARY}",
        json={"input": "10", "output": "20", "valid_from": "2026-01-01T00:00:00Z"},
        headers=admin_headers,
    )
    assert price.status_code == 200, price.text
    done = berlin_client.post(
        "/api/pricing/reprice", json={"unpriced": True}, headers=admin_headers
    )
    assert done.status_code == 200, done.text
    assert done.json()["changed"] == 1
    # c: 1000 x 10 + 100 x 20 micro-USD = 12,000 micro-USD = 12,000,000 nano-USD, priced now
    expected = {**EXPECTED, ("2026-11-16", IMAGINARY): (1000, 0, 0, 0, 100, 12_000_000, 1, 0)}
    assert utc_rows(database, tenant.org_id) == expected
    assert {
        key: tuple(values) for key, values in sums_of_stored_events(database, tenant.org_id).items()
    } == expected
    assert drift(database) == []


def test_reconcile_finds_and_fixes_a_drifting_utc_row(
    berlin_client: TestClient, database: Database, make_tenant: Callable[..., Tenant]
) -> None:
    tenant = make_tenant()
    ok(berlin_client, tenant.headers, *EVENTS)
    with database.engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE usage_utc_daily SET cost_nano = cost_nano + 1 "
                "WHERE organization_id = :org AND day = '2026-11-15'"
            ),
            {"org": tenant.org_id},
        )
        connection.execute(
            text("DELETE FROM usage_utc_daily WHERE organization_id = :org AND model = :model"),
            {"org": tenant.org_id, "model": IMAGINARY},
        )
    report = drift(database)
    org = tenant.org_id
    assert (
        f"usage_utc_daily ({org}, '2026-11-15', 'anthropic', '{SONNET}'): cost_nano is "
        "13500001, events say 13500000"
    ) in report
    assert (
        f"usage_utc_daily ({org}, '2026-11-16', 'anthropic', '{IMAGINARY}'): event_count is 0, "
        "events say 1"
    ) in report
    with database.session(write=True) as session:
        reconcile(session, fix=True)
    assert utc_rows(database, tenant.org_id) == EXPECTED
    assert drift(database) == []


def test_the_migration_builds_the_rollup_from_stored_events(
    berlin_client: TestClient, database: Database, make_tenant: Callable[..., Tenant]
) -> None:
    tenant = make_tenant()
    ok(berlin_client, tenant.headers, *EVENTS)
    config = runner.alembic_config()
    with database.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0017_gateway_holds")  # the table is gone
    with database.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")  # and built from the events
    assert utc_rows(database, tenant.org_id) == EXPECTED
    assert drift(database) == []
