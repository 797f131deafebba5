"""token_usage_monthly: per organization and billing month, exactly the sums of its events."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.conftest import Tenant
from tests.ledger.conftest import MONTHLY_FIELDS, monthly_rows, ok
from tokenledger.db import Database
from tokenledger.ledger.reconcile import reconcile
from tokenledger.usage.models import UsageDaily

# (timestamp, month in Europe/Berlin, month in UTC)
INSTANTS = [
    ("2025-12-31T22:59:59Z", "2025-12", "2025-12"),  # 23:59:59 CET
    ("2025-12-31T23:00:00Z", "2026-01", "2025-12"),  # New Year in Berlin
    ("2026-02-28T22:59:59Z", "2026-02", "2026-02"),
    ("2026-02-28T23:00:00Z", "2026-03", "2026-02"),  # 1 March 00:00 CET
    ("2026-03-29T00:59:59Z", "2026-03", "2026-03"),  # 01:59:59 CET, before the switch
    ("2026-03-29T01:00:00Z", "2026-03", "2026-03"),  # 03:00 CEST, after it
    ("2026-03-31T21:59:59Z", "2026-03", "2026-03"),  # 23:59:59 CEST
    ("2026-03-31T22:30:00Z", "2026-04", "2026-03"),  # 00:30 CEST on 1 April
    ("2026-04-01T00:30:00+02:00", "2026-04", "2026-03"),  # the same instant, other offset
    ("2026-10-25T00:30:00Z", "2026-10", "2026-10"),  # 02:30 CEST
    ("2026-10-25T01:30:00Z", "2026-10", "2026-10"),  # 02:30 CET, an hour later
    ("2026-10-31T22:59:59Z", "2026-10", "2026-10"),  # 23:59:59 CET (UTC+1 again)
    ("2026-10-31T23:30:00Z", "2026-11", "2026-10"),  # 00:30 CET on 1 November
]


def events_for(instants: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    events = []
    for n, (at, _berlin, _utc) in enumerate(instants):
        body: dict[str, Any] = {
            "id": f"e{n}",
            "timestamp": at,
            "model": "claude-sonnet-4-5" if n % 4 else "unknown-model",
            "input_tokens": 1000 + n,
            "output_tokens": 10 * n,
            "cache_creation_input_tokens": 7 * n,
            "cache_read_input_tokens": 100 * n,
            "api_calls": n % 3,
        }
        if n % 5 == 1:
            body["cost_usd"] = f"0.{n:03d}000001"
        events.append(body)
    return events


# Each event's cost in nano-USD, by hand: unknown-model without cost_usd (n % 4 == 0) is
# unpriced; cost_usd given (n % 5 == 1) is taken as sent; claude-sonnet-4-5 otherwise:
# (1000 + n) * 3000 + 10n * 15000 + 7n * 3750 (5m writes) + 100n * 300
# = 3_000_000 + (3000 + 150_000 + 26_250 + 30_000) n = 3_000_000 + 209_250 n.
COST_NANO: list[int | None] = [
    None,  # e0
    1_000_001,  # e1: "0.001000001"
    3_418_500,  # e2
    3_627_750,  # e3
    None,  # e4
    4_046_250,  # e5
    6_000_001,  # e6: "0.006000001"
    4_464_750,  # e7
    None,  # e8
    4_883_250,  # e9
    5_092_500,  # e10
    11_000_001,  # e11: "0.011000001"
    None,  # e12
]


def expected_months(events: list[dict[str, Any]], months: list[str]) -> dict[str, dict[str, int]]:
    """The monthly sums worked out from the events sent and the hand-worked costs."""
    expected: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(MONTHLY_FIELDS, 0))
    for sent, cost, month in zip(events, COST_NANO, months, strict=True):
        row = expected[month]
        row["input_tokens"] += sent["input_tokens"]
        row["output_tokens"] += sent["output_tokens"]
        row["cache_creation_tokens"] += sent["cache_creation_input_tokens"]
        row["cache_read_tokens"] += sent["cache_read_input_tokens"]
        row["api_calls"] += sent["api_calls"]
        row["event_count"] += 1
        if cost is None:
            row["unpriced_events"] += 1
        else:
            row["cost_nano"] += cost
    return dict(expected)


def nano(text: str | None) -> int | None:
    return None if text is None else int(Decimal(text).scaleb(9))


def test_months_are_calendar_months_in_the_billing_time_zone(
    berlin_client: TestClient,
    client: TestClient,
    database: Database,
    make_tenant: Callable[..., Tenant],
) -> None:
    in_berlin, in_utc = make_tenant(), make_tenant()
    # The same instant twice would be two events; e8 repeats e7's instant on purpose.
    events = events_for(INSTANTS)
    berlin = ok(berlin_client, in_berlin.headers, *events[:7])
    berlin_rest = ok(berlin_client, in_berlin.headers, *events[7:])
    berlin["results"] += berlin_rest["results"]
    utc = ok(client, in_utc.headers, *events)

    assert [r["status"] for r in berlin["results"]] == ["created"] * len(events)
    assert berlin["results"][0]["pricing"] == "unpriced"
    assert berlin["results"][1]["pricing"] == "provided"
    assert berlin["results"][2]["pricing"] == "priced"
    assert [nano(r["cost_usd"]) for r in berlin["results"]] == COST_NANO
    assert [nano(r["cost_usd"]) for r in utc["results"]] == COST_NANO

    berlin_months = [month for _at, month, _utc in INSTANTS]
    utc_months = [month for _at, _berlin, month in INSTANTS]
    assert monthly_rows(database, in_berlin.org_id) == expected_months(events, berlin_months)
    assert monthly_rows(database, in_utc.org_id) == expected_months(events, utc_months)
    # The month sums of cost, added up by hand from COST_NANO.
    assert {m: row["cost_nano"] for m, row in monthly_rows(database, in_berlin.org_id).items()} == {
        "2025-12": 0,  # e0 unpriced
        "2026-01": 1_000_001,  # e1
        "2026-02": 3_418_500,  # e2
        "2026-03": 13_674_001,  # e3 + e5 + e6 (e4 unpriced)
        "2026-04": 4_464_750,  # e7 (e8 unpriced)
        "2026-10": 20_975_751,  # e9 + e10 + e11
        "2026-11": 0,  # e12 unpriced
    }
    assert {m: row["cost_nano"] for m, row in monthly_rows(database, in_utc.org_id).items()} == {
        "2025-12": 1_000_001,  # e0 + e1
        "2026-02": 7_046_250,  # e2 + e3
        "2026-03": 14_511_001,  # e4..e8
        "2026-10": 20_975_751,  # e9..e12
    }
    assert set(monthly_rows(database, in_berlin.org_id)) == {
        "2025-12",
        "2026-01",
        "2026-02",
        "2026-03",
        "2026-04",
        "2026-10",
        "2026-11",
    }

    with database.session(write=False) as session:
        days: dict[str, int] = defaultdict(int)
        for row in session.scalars(
            select(UsageDaily).where(UsageDaily.organization_id == in_berlin.org_id)
        ):
            days[row.day] += row.event_count
        # 2026-03-29 has 23 hours in Berlin, 2026-10-25 has 25: each is one day
        assert days["2026-03-29"] == 2
        assert days["2026-10-25"] == 2
        assert days["2026-04-01"] == 2
        assert reconcile(session, fix=False) == []
