"""Migration 0009_lean_events converts a ledger written with the first schema.

A database at revision 0001 gets events as the first schema stored them (prices in every
row, hex digests, and on SQLite text instants), with consistent rollups; after upgrading,
nothing drifts, every event reads back the same, and the read routes answer with the
figures worked out by hand.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.conftest import add_admin, admin_bearer, make_settings
from tokenledger.app import create_app
from tokenledger.auth.service import create_api_key
from tokenledger.db import Database, UTCDateTime
from tokenledger.ledger.prepare import content_hash
from tokenledger.ledger.reconcile import reconcile
from tokenledger.migrations import runner
from tokenledger.usage.models import UsageEvent, UsagePrice
from tokenledger.usage.schemas import UsageEventIn

SONNET_RATES = {
    "input": "3",
    "output": "15",
    "cache_write_5m": "3.75",
    "cache_write_1h": "6",
    "cache_read": "0.3",
}
LIBRARY = "genai-prices 0.2.3"
AT = datetime(2026, 6, 15, 12, 0, 0, 123456, tzinfo=UTC)
# (id, model, input, output, cost_usd given, cost nano, pricing, source, version, rates)
EVENTS: list[tuple[Any, ...]] = [
    # 1000 * $3/MTok + 100 * $15/MTok = $0.0045; 0.45 credits at $0.01
    (
        "e1",
        "claude-sonnet-4-5",
        1000,
        100,
        None,
        4_500_000,
        "priced",
        "genai-prices",
        LIBRARY,
        SONNET_RATES,
    ),
    # 2000 * 3 + 0 = $0.006
    (
        "e2",
        "claude-sonnet-4-5",
        2000,
        0,
        None,
        6_000_000,
        "priced",
        "genai-prices",
        LIBRARY,
        SONNET_RATES,
    ),
    ("e3", "claude-sonnet-4-5", 10, 10, "0.5", 500_000_000, "provided", "caller", None, None),
    ("e4", "mystery-model", 700, 70, None, None, "unpriced", None, None, None),
]
OLD_EVENTS = sa.table(
    "usage_events",
    *(
        sa.column(name)
        for name in (
            "organization_id",
            "external_id",
            "content_hash",
            "year_month",
            "day",
            "provider",
            "model",
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
            "cache_write_1h_tokens",
            "api_calls",
            "license_id",
            "pricing",
            "cost_nano",
            "credits_micro",
            "price_source",
            "price_version",
            "priced_model",
            "refresh_id",
        )
    ),
    sa.column("timestamp", UTCDateTime()),
    sa.column("received_at", UTCDateTime()),
    sa.column("rates", sa.JSON(none_as_null=True)),
)


@pytest.fixture
def old_database(empty_database_url: str) -> Iterator[Database]:
    database = Database(make_settings(empty_database_url, backfill_max_age_days=36500))
    config = runner.alembic_config()
    with database.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
    yield database
    database.dispose()


def _event_in(event: tuple[Any, ...]) -> UsageEventIn:
    event_id, model, inp, out, cost = event[:5]
    body: dict[str, Any] = {
        "id": event_id,
        "organization": "acme",
        "timestamp": AT.isoformat(),
        "model": model,
        "input_tokens": inp,
        "output_tokens": out,
    }
    if cost is not None:
        body["cost_usd"] = cost
    return UsageEventIn.model_validate(body)


def _write_first_schema(database: Database) -> None:
    """An organization, a license at $0.01 a credit, four events and their rollups."""
    with database.engine.begin() as c:
        now = datetime(2026, 6, 1, tzinfo=UTC).replace(tzinfo=None)
        c.execute(
            sa.text(
                "INSERT INTO organizations (id, name, slug, created_at) "
                "VALUES (1, 'Acme', 'acme', :now)"
            ),
            {"now": now},
        )
        c.execute(
            sa.text(
                "INSERT INTO licenses (id, organization_id, status, valid_from, "
                "credits_total_micro, cost_per_credit_nano, token_budget_nano, budget_period, "
                "budget_warning_percent, enforcement, credits_used_micro, created_at, "
                "updated_at) VALUES (1, 1, 'active', :start, 1000000000, 10000000, NULL, "
                "'monthly', 80, 'soft', :used, :now, :now)"
            ),
            # credits: 0.45 + 0.6 + 50 = 51.05 (the unpriced event has none)
            {"start": datetime(2026, 1, 1), "used": 51_050_000, "now": now},
        )
        for event in EVENTS:
            cost = event[5]
            c.execute(
                OLD_EVENTS.insert().values(
                    organization_id=1,
                    external_id=event[0],
                    content_hash=content_hash(_event_in(event), 1).hex(),
                    timestamp=AT,
                    received_at=AT,
                    year_month="2026-06",
                    day="2026-06-15",
                    provider="anthropic",
                    model=event[1],
                    input_tokens=event[2],
                    output_tokens=event[3],
                    cache_creation_input_tokens=0,
                    cache_read_input_tokens=0,
                    cache_write_1h_tokens=0,
                    api_calls=1,
                    license_id=1,
                    pricing=event[6],
                    cost_nano=cost,
                    credits_micro=None if cost is None else cost // 10,
                    price_source=event[7],
                    price_version=event[8],
                    priced_model=event[1] if event[6] == "priced" else None,
                    rates=event[9],
                    refresh_id=None,
                )
            )
        totals = {
            "input_tokens": 3710,
            "output_tokens": 180,
            "cache_creation_tokens": 0,
            "cache_read_tokens": 0,
            "cost_nano": 510_500_000,
            "api_calls": 4,
            "event_count": 4,
            "unpriced_events": 1,
        }
        columns = ", ".join(totals)
        values = ", ".join(str(v) for v in totals.values())
        c.execute(
            sa.text(
                f"INSERT INTO token_usage_monthly (organization_id, year_month, {columns}, "
                f"refresh_count) VALUES (1, '2026-06', {values}, 0)"
            )
        )
        for model, sums in (
            ("claude-sonnet-4-5", (3010, 110, 510_500_000, 3, 3, 0)),
            ("mystery-model", (700, 70, 0, 1, 1, 1)),
        ):
            inp, out, cost, calls, count, unpriced = sums
            c.execute(
                sa.text(
                    "INSERT INTO usage_daily (organization_id, day, provider, model, "
                    "input_tokens, output_tokens, cache_creation_tokens, cache_read_tokens, "
                    "cost_nano, api_calls, event_count, unpriced_events) VALUES (1, "
                    f"'2026-06-15', 'anthropic', '{model}', {inp}, {out}, 0, 0, {cost}, "
                    f"{calls}, {count}, {unpriced})"
                )
            )
        c.execute(
            sa.text(
                "INSERT INTO license_usage (license_id, year_month, cost_nano, credits_micro, "
                "event_count) VALUES (1, '2026-06', 510500000, 51050000, 4)"
            )
        )


def test_a_first_schema_ledger_converts_without_drift(old_database: Database) -> None:
    _write_first_schema(old_database)
    runner.upgrade(old_database.engine)
    assert runner.is_migrated(old_database.engine)
    database = Database(old_database.settings)
    try:
        with database.session(write=False) as session:
            assert reconcile(session, fix=False) == []
            # One row per distinct price: the library's sonnet price, the caller's, none.
            prices = session.scalars(select(UsagePrice).order_by(UsagePrice.pricing)).all()
            assert [(p.model, p.pricing, p.price_source, p.rates) for p in prices] == [
                ("claude-sonnet-4-5", "priced", "genai-prices", SONNET_RATES),
                ("claude-sonnet-4-5", "provided", "caller", None),
                ("mystery-model", "unpriced", None, None),
            ]
            stored = {e.external_id: e for e in session.scalars(select(UsageEvent))}
            assert session.scalar(select(func.count()).select_from(UsageEvent)) == 4
        for event in EVENTS:
            row = stored[event[0]]
            assert row.timestamp == AT
            assert row.received_at == AT
            assert row.content_hash == content_hash(_event_in(event), 1)
            assert (row.model, row.input_tokens, row.output_tokens) == event[1:4]
            assert (row.cost_nano, row.pricing, row.price_source, row.price_version) == (
                event[5],
                event[6],
                event[7],
                event[8],
            )
            assert row.rates == event[9]

        with database.session(write=True) as session:
            _key, secret = create_api_key(session, "after", "acme", actor=None)
        admin = admin_bearer(add_admin(database, "admin@example.com"))
        with TestClient(create_app(database.settings)) as client:
            ingest = {"Authorization": f"Bearer {secret}"}
            again = [_event_in(EVENTS[0]).model_dump(mode="json", exclude_none=True)]
            response = client.post("/api/v1/usage", json={"events": again}, headers=ingest)
            assert response.status_code == 200, response.text
            (result,) = response.json()["results"]
            assert (result["status"], result["cost_usd"], result["credits"]) == (
                "duplicate",
                "0.0045",
                "0.45",
            )
            changed = [{**again[0], "output_tokens": 101}]
            response = client.post("/api/v1/usage", json={"events": changed}, headers=ingest)
            assert response.status_code == 409

            months = client.get("/api/token-usage/1", headers=admin).json()
            assert [(m["year_month"], m["input_tokens"], m["total_cost_usd"]) for m in months] == [
                ("2026-06", 3710, 0.51)
            ]
            unpriced = client.get("/api/pricing/unpriced", headers=admin).json()
            assert [(u["model"], u["events"]) for u in unpriced] == [("mystery-model", 1)]
            models = client.get("/api/token-usage/1/models?month=2026-06", headers=admin).json()
            assert [(m["model"], m["cost_usd"]) for m in models["models"]] == [
                ("claude-sonnet-4-5", "0.5105"),
                ("mystery-model", "0.00"),
            ]
            exported = client.get(
                "/api/token-usage/1/events.csv?from=2026-06-01T00:00:00Z&to=2026-07-01T00:00:00Z",
                headers=admin,
            )
            assert exported.status_code == 200
            rows = list(csv.DictReader(io.StringIO(exported.text)))
            assert sorted(
                (r["id"], r["pricing"], r["cost_usd"], r["price_source"], r["timestamp"])
                for r in rows
            ) == [
                ("e1", "priced", "0.0045", "genai-prices", AT.isoformat()),
                ("e2", "priced", "0.006", "genai-prices", AT.isoformat()),
                ("e3", "provided", "0.50", "caller", AT.isoformat()),
                ("e4", "unpriced", "", "", AT.isoformat()),
            ]
            credits = {r["id"]: r["credits"] for r in rows}
            assert credits == {"e1": "0.45", "e2": "0.6", "e3": "50.0", "e4": ""}
    finally:
        database.dispose()
