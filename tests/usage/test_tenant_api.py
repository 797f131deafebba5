# ruff: noqa: F811  (the fixtures pair and settings, imported from tests/portal/conftest.py)
"""The tenant read API (ingest keys): an organization's own figures, and nothing else.

Expected values are worked by hand from the events of tests/portal/conftest.py (Europe/Berlin
months), whose two tenants and Berlin settings this module takes.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest

from tests.conftest import NOW

# The two Berlin tenants of the tenant access tests, and their settings (fixtures).
from tests.portal.conftest import B_SLUG, assert_nothing_of_b, pair, settings  # noqa: F401

ROUTES = (
    "/api/v1/usage/summary",
    "/api/v1/usage/monthly",
    "/api/v1/usage/models?month=2026-11",
    "/api/v1/usage/models?month=2026-10",
    "/api/v1/usage/daily?month=2026-11",
    "/api/v1/usage/daily?month=2026-10",
    "/api/v1/usage/events.csv?from=2026-01-01T00:00:00Z&to=2027-01-01T00:00:00Z",
)


def _get(client, path, headers):  # type: ignore[no-untyped-def]
    response = client.get(path, headers=headers)
    assert response.status_code == 200, response.text
    return response


def test_the_summary_is_the_budget_state_of_this_period_worked_by_hand(client, pair):
    body = _get(client, "/api/v1/usage/summary", pair.a.headers).json()
    assert body["organization"] == "alpha"
    assert body["timezone"] == "Europe/Berlin"
    # November in Berlin: 2026-11-01 00:00 CET to 2026-12-01 00:00 CET.
    assert (body["period_start"], body["period_end"]) == (
        "2026-11-01T00:00:00+01:00",
        "2026-12-01T00:00:00+01:00",
    )
    # November's spend: 2.50 + 0.75 + 0.40 = 3.65 of 10; credits count the whole license:
    # (1.25 + 3.65) / 0.01 = 490 of 1000.
    assert body["token_budget_usd"] == "10.00"
    assert body["spent_usd"] == "3.65"
    assert body["remaining_usd"] == "6.35"
    assert (body["credits_total"], body["credits_used"], body["credits_remaining"]) == (
        "1000.0",
        "490.0",
        "510.0",
    )
    assert (body["state"], body["allowed"]) == ("ok", True)
    forecast = body["forecast"]
    # The window: Berlin days Nov 12 to 18, with 0.75 + 0.40 = 1.15 USD; per day 1.15 / 7.
    pace = Fraction(115, 100) / 7
    assert Decimal(forecast["usd_per_day"]) == Decimal("0.164285714")
    # 6.35 left lasts 38.7 days: past the reset, so no date; by the reset (12 days 11 h
    # from now) the month comes to 3.65 + 1.15 x (12 + 11/24) / 7.
    assert forecast["budget_exhausted_at"] is None
    projected = Fraction(365, 100) + pace * (12 + Fraction(11, 24))
    assert abs(Fraction(Decimal(forecast["projected_spent_usd"])) - projected) < Fraction(1, 10**9)
    # Credits: 5.10 USD left at that pace, the license open-ended.
    days = Fraction(510, 100) / pace
    expected = NOW + timedelta(microseconds=int(days * 86_400 * 10**6))
    assert forecast["credits_exhausted_at"] == expected.isoformat()


def test_the_figures_are_the_admin_routes(client, pair, admin_headers):
    a = pair.a
    admin = f"/api/token-usage/{a.org_id}"
    assert _get(client, "/api/v1/usage/monthly", a.headers).json() == (
        _get(client, admin, admin_headers).json()
    )
    for month in ("2026-10", "2026-11"):
        assert _get(client, f"/api/v1/usage/models?month={month}", a.headers).json() == (
            _get(client, f"{admin}/models?month={month}", admin_headers).json()
        )
    # The admin's daily series ends today (Nov 18): its 18 days are November's first 18.
    days = _get(client, "/api/v1/usage/daily?month=2026-11", a.headers).json()["days"]
    assert days[:18] == _get(client, f"{admin}/daily?days=18", admin_headers).json()
    summary = _get(client, "/api/v1/usage/summary", a.headers).json()
    state = _get(client, "/api/v1/budget", a.headers).json()
    for name in ("credits_used", "credits_remaining", "spent_usd", "remaining_usd", "state"):
        assert summary[name] == state[name], name
    assert summary["forecast"] == state["forecast"]


def test_months_are_berlin_months_worked_by_hand(client, pair):
    monthly = _get(client, "/api/v1/usage/monthly", pair.a.headers).json()
    assert [(row["year_month"], row["cost_usd"], row["api_calls"]) for row in monthly] == [
        ("2026-11", "3.65", 3),
        ("2026-10", "1.25", 1),
    ]
    assert [row["input_tokens"] for row in monthly] == [3000, 1000]
    models = _get(client, "/api/v1/usage/models?month=2026-11", pair.a.headers).json()
    assert [(m["model"], m["cost_usd"], m["api_calls"]) for m in models["models"]] == [
        ("claude-haiku-4-5", "2.50", 1),
        ("claude-sonnet-4-5", "1.15", 2),
    ]
    days = _get(client, "/api/v1/usage/daily?month=2026-11", pair.a.headers).json()["days"]
    assert len(days) == 30
    spent = {day["day"]: day["cost_usd"] for day in days if day["cost_usd"] != "0.00"}
    assert spent == {"2026-11-01": "2.50", "2026-11-15": "0.75", "2026-11-18": "0.40"}
    october = _get(client, "/api/v1/usage/daily?month=2026-10", pair.a.headers).json()["days"]
    assert [(d["day"], d["cost_usd"]) for d in october if d["cost_usd"] != "0.00"] == [
        ("2026-10-31", "1.25")
    ]


def test_the_csv_holds_the_organizations_events_in_the_range(client, pair):
    # November in Berlin, as instants: three of A's four events.
    text = _get(
        client,
        "/api/v1/usage/events.csv?from=2026-11-01T00:00:00%2B01:00&to=2026-12-01T00:00:00%2B01:00",
        pair.a.headers,
    ).text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(row["id"], row["cost_usd"]) for row in rows] == [
        ("a-nov-01", "2.50"),
        ("a-nov-15", "0.75"),
        ("a-nov-18", "0.40"),
    ]


def test_a_key_of_one_organization_never_reads_another(client, pair):
    a, b = pair.a, pair.b
    for path in ROUTES:
        response = _get(client, path, a.headers)
        assert_nothing_of_b(response.text)
        assert f'"organization_id":{b.org_id}' not in response.text.replace(" ", "")
    # Naming another organization, existing or not, by slug or id: the same refusal.
    for ref in (B_SLUG, str(b.org_id), "no-such-org", "999999", "%00", "alpha%20", "ALPHA", "-1"):
        for path in ROUTES:
            sep = "&" if "?" in path else "?"
            response = client.get(f"{path}{sep}organization={ref}", headers=a.headers)
            assert response.status_code in (403, 422), (path, ref, response.text)
            assert_nothing_of_b(response.text)
    # Its own slug or id is fine.
    assert _get(client, "/api/v1/usage/monthly?organization=alpha", a.headers).json()
    assert _get(client, f"/api/v1/usage/monthly?organization={a.org_id}", a.headers).json()


def test_a_service_key_names_the_organization(client, pair, service_key):
    b_rows = _get(client, f"/api/v1/usage/monthly?organization={B_SLUG}", service_key).json()
    assert [row["cost_usd"] for row in b_rows] == ["2333.31", "777.77"]  # 3 x and 1 x 777.77
    a_rows = _get(client, "/api/v1/usage/monthly?organization=alpha", service_key).json()
    assert_nothing_of_b(str(a_rows))
    assert client.get("/api/v1/usage/summary", headers=service_key).status_code == 422
    missing = client.get("/api/v1/usage/summary?organization=nope", headers=service_key)
    assert missing.status_code == 404


@pytest.mark.parametrize(
    "query",
    [
        "month=0000-01",
        "month=2026-13",
        "month=9999-12",
        "month=2026-1",
        "month=2026-11-01",
        "month=%272026-11",
        "month=",
    ],
)
def test_a_month_outside_the_rules_is_a_422(client, pair, query):
    for route in ("models", "daily"):
        response = client.get(f"/api/v1/usage/{route}?{query}", headers=pair.a.headers)
        assert response.status_code == 422, response.text
        assert_nothing_of_b(response.text)


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("0001-01-01T00:00:00%2B01:00", "2027-01-01T00:00:00Z"),
        ("2026-01-01T00:00:00Z", "9999-12-31T23:59:59-01:00"),
        ("2026-12-01T00:00:00Z", "2026-11-01T00:00:00Z"),
        ("2026-11-01T00:00:00", "2026-12-01T00:00:00Z"),  # no offset
        ("0", "1"),
        ("", "2026-12-01T00:00:00Z"),
    ],
)
def test_a_csv_range_outside_the_rules_is_a_422(client, pair, start, end):
    response = client.get(f"/api/v1/usage/events.csv?from={start}&to={end}", headers=pair.a.headers)
    assert response.status_code == 422, response.text


def test_without_usd_only_credits_and_tokens_are_shown(database_url, pair, clock):
    from fastapi.testclient import TestClient

    from tests.conftest import make_settings
    from tokenledger.app import create_app

    settings = make_settings(database_url, billing_timezone="Europe/Berlin", tenant_show_usd=False)
    with TestClient(create_app(settings, clock=clock)) as client:
        summary = _get(client, "/api/v1/usage/summary", pair.a.headers).json()
        for name in ("token_budget_usd", "spent_usd", "remaining_usd", "reserved_usd"):
            assert summary[name] is None
        assert summary["forecast"]["usd_per_day"] is None
        assert summary["forecast"]["projected_spent_usd"] is None
        assert summary["credits_used"] == "490.0"
        for path in ROUTES[1:6]:
            body = _get(client, path, pair.a.headers).text
            assert "cost_usd" not in body, path
        header = _get(client, ROUTES[6], pair.a.headers).text.splitlines()[0]
        assert "cost_usd" not in header.split(",")
        assert "credits" in header.split(",")


def test_no_key_or_an_admin_token_is_refused(client, pair, admin_headers):
    for path in ROUTES:
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"Authorization": "Bearer tl_nope"}).status_code == 401
        # An admin token is not an ingest key.
        assert client.get(path, headers=admin_headers).status_code == 401


def test_a_fixed_now_decides_this_month(client, pair, clock):
    clock.now = datetime(2026, 10, 31, 22, 45, tzinfo=UTC)  # 23:45 in Berlin: still October
    body = _get(client, "/api/v1/usage/models", pair.a.headers).json()
    assert body["year_month"] == "2026-10"
