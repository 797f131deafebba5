"""Per-model breakdown, daily series, dashboard figures and the CSV export."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from tests.conftest import NOW, event, ingest
from tokenledger.usage import queries

# The app's clock stands at NOW, 2026-11-18 12:00 UTC (tests/usage/conftest.py): this month is
# 2026-11, and this day is in the previous one.
LAST_MONTH = datetime(2026, 10, 30, tzinfo=UTC)


def test_models_of_a_month(client, admin_headers, make_tenant):
    tenant = make_tenant(license={})
    other = make_tenant()
    last_month = LAST_MONTH
    ingest(
        client,
        tenant,
        event("0.5", model="claude-haiku-4-5", input_tokens=10, output_tokens=1),
        event("0.25", model="claude-haiku-4-5", input_tokens=20, output_tokens=2, api_calls=3),
        event("2", model="claude-opus-4-1", cache_read_input_tokens=7),
        event(None, model="house-model-7", input_tokens=5),  # unpriced
        event("9", model="claude-opus-4-1", at=last_month),
    )
    ingest(client, other, event("100", model="claude-haiku-4-5"))
    response = client.get(f"/api/token-usage/{tenant.org_id}/models", headers=admin_headers)
    assert response.status_code == 200
    body = response.json()
    assert body["year_month"] == "2026-11"
    models = body["models"]
    assert [m["model"] for m in models] == ["claude-opus-4-1", "claude-haiku-4-5", "house-model-7"]
    haiku = models[1]
    assert haiku == {
        "provider": "anthropic",
        "model": "claude-haiku-4-5",
        "input_tokens": 30,
        "output_tokens": 3,
        "cache_creation_tokens": 0,
        "cache_read_tokens": 0,
        "total_cost_usd": 0.75,
        "cost_usd": "0.75",
        "api_calls": 4,
        "events": 2,
        "unpriced_events": 0,
    }
    assert models[0]["cache_read_tokens"] == 7
    assert models[0]["cost_usd"] == "2.00"
    assert models[2]["unpriced_events"] == 1
    assert models[2]["total_cost_usd"] == 0

    response = client.get(
        f"/api/token-usage/{tenant.org_id}/models",
        params={"month": "2026-10"},
        headers=admin_headers,
    )
    assert [(m["model"], m["cost_usd"]) for m in response.json()["models"]] == [
        ("claude-opus-4-1", "9.00")
    ]
    for bad in ("2026-13", "2026-1", "x", "2026-01-01"):
        response = client.get(
            f"/api/token-usage/{tenant.org_id}/models", params={"month": bad}, headers=admin_headers
        )
        assert response.status_code == 422, bad
    assert client.get("/api/token-usage/999999/models", headers=admin_headers).status_code == 404


def test_model_costs_are_exact_decimal_text(client, admin_headers, make_tenant):
    tenant = make_tenant()
    ingest(client, tenant, event("0.0000001"), event("0.000000002"))
    models = client.get(f"/api/token-usage/{tenant.org_id}/models", headers=admin_headers).json()
    assert models["models"][0]["cost_usd"] == "0.000000102"
    assert Decimal(models["models"][0]["cost_usd"]) == Decimal("0.000000102")


def test_daily_series_of_the_last_days(client, clock, admin_headers, make_tenant):
    # Five seconds after midnight: "today" has only just begun.
    today = datetime(2026, 11, 18, tzinfo=UTC)
    clock.now = today + timedelta(seconds=5)
    tenant = make_tenant()
    ingest(
        client,
        tenant,
        event("1", at=today + timedelta(seconds=1)),
        event("2", at=today + timedelta(seconds=2), model="claude-haiku-4-5", api_calls=2),
        event("4", at=today - timedelta(days=2) + timedelta(hours=12)),
        event("8", at=today - timedelta(days=3) + timedelta(hours=12)),  # outside 3 days
    )
    response = client.get(
        f"/api/token-usage/{tenant.org_id}/daily", params={"days": 3}, headers=admin_headers
    )
    assert response.status_code == 200
    series = response.json()
    assert [d["day"] for d in series] == ["2026-11-16", "2026-11-17", "2026-11-18"]
    assert [d["total_cost_usd"] for d in series] == [4.0, 0, 3.0]
    assert [d["api_calls"] for d in series] == [1, 0, 3]
    assert series[2]["input_tokens"] == 2000
    assert series[2]["output_tokens"] == 200
    # Without `days`: the last 30 days, oldest first, ending today, all four events inside.
    default = client.get(f"/api/token-usage/{tenant.org_id}/daily", headers=admin_headers)
    assert default.status_code == 200
    thirty = default.json()
    assert len(thirty) == 30
    assert thirty[0]["day"] == "2026-10-20"  # 29 days before 2026-11-18
    assert thirty[-1]["day"] == "2026-11-18"
    assert [d["day"] for d in thirty[11:13]] == ["2026-10-31", "2026-11-01"]
    assert sum(Decimal(str(d["total_cost_usd"])) for d in thirty) == Decimal(15)
    for bad in (0, 367, "x"):
        response = client.get(
            f"/api/token-usage/{tenant.org_id}/daily", params={"days": bad}, headers=admin_headers
        )
        assert response.status_code == 422
    assert client.get("/api/token-usage/999999/daily", headers=admin_headers).status_code == 404


def test_daily_series_has_every_calendar_day_across_daylight_saving(database):
    berlin = ZoneInfo("Europe/Berlin")
    # 00:30 on the day after clocks went forward (2026-03-29) and after they went back.
    for now in (
        datetime(2026, 3, 30, 0, 30, tzinfo=berlin).astimezone(UTC),
        datetime(2026, 10, 25, 23, 30, tzinfo=berlin).astimezone(UTC),
    ):
        with database.session(write=False) as session:
            series = queries.daily_series(session, 1, 4, berlin, now)
        today = now.astimezone(berlin).date()
        expected = [(today - timedelta(days=n)).isoformat() for n in (3, 2, 1, 0)]
        assert [d["day"] for d in series] == expected, now


def test_dashboard_stats(client, admin_headers, viewer_headers, make_tenant, database):
    now = NOW
    last_month = LAST_MONTH
    ok = make_tenant(
        license={
            "credits_total": Decimal(1000),  # 10 USD at 0.01
            "token_budget_usd": None,
            "valid_from": now - timedelta(days=60),
        }
    )
    warning = make_tenant(
        license={
            "credits_total": Decimal(100),
            "cost_per_credit": Decimal("0.02"),  # 2 USD
            "token_budget_usd": None,
        }
    )
    exhausted = make_tenant(license={"credits_total": Decimal(0), "token_budget_usd": Decimal(1)})
    bare = make_tenant()
    archived = make_tenant()
    ingest(client, ok, event("1", at=last_month), event("0.5"))
    ingest(client, warning, event("1.7"))
    ingest(client, exhausted, event("1.25"))
    ingest(client, bare, event("0.05"), event(None, model="house-model-7"))
    ingest(client, archived, event("0.3", at=last_month))
    response = client.patch(
        f"/api/organizations/{archived.org_id}", json={"archived": True}, headers=admin_headers
    )
    assert response.status_code == 200, response.text

    response = client.get("/api/dashboard/stats", headers=viewer_headers)
    assert response.status_code == 200
    stats = response.json()
    assert stats["total_cost_usd"] == 4.8  # all organizations, all time
    assert stats["cost_this_month_usd"] == 3.5
    assert stats["year_month"] == "2026-11"
    assert stats["organizations"] == 4
    assert stats["active_licenses"] == 3
    assert stats["organizations_ok"] == 1
    assert stats["organizations_warning"] == 1
    assert stats["organizations_exhausted"] == 1
    assert stats["organizations_without_license"] == 1
    assert stats["unpriced_events"] == 1
    assert stats["credits_sold"] == 1100.0
    # 1.5 / 0.01, 1.7 / 0.02 and 1.25 / 0.01 (a license without a credit limit still counts)
    assert stats["credits_consumed"] == 150 + 85 + 125
    assert stats["credits_sold_value_usd"] == 12.0
    assert stats["credits_consumed_value_usd"] == 4.45
    assert stats["provider_cost_usd"] == 4.45
    assert stats["margin_usd"] == 7.55


def test_dashboard_of_an_empty_ledger(client, admin_headers):
    stats = client.get("/api/dashboard/stats", headers=admin_headers).json()
    assert stats["total_cost_usd"] == 0
    assert stats["cost_this_month_usd"] == 0
    assert stats["organizations"] == 0
    assert stats["margin_usd"] == 0


def _csv(client, org_id: int, start: str, end: str, headers):  # type: ignore[no-untyped-def]
    return client.get(
        f"/api/token-usage/{org_id}/events.csv",
        params={"from": start, "to": end},
        headers=headers,
    )


def test_csv_export_between_two_dates(client, admin_headers, viewer_headers, make_tenant):
    tenant = make_tenant(license={"valid_from": datetime(2025, 12, 1, tzinfo=UTC)})
    other = make_tenant()
    day = datetime(2026, 10, 12, tzinfo=UTC)
    ingest(
        client,
        tenant,
        event("0.000000123", at=day, id="inside-1", refresh_id="run-1"),
        event("1.5", at=day + timedelta(hours=1), id="inside-2", metadata={"a": 'x,y\n"quoted"'}),
        event("7", at=day - timedelta(seconds=1), id="before"),
        event("7", at=day + timedelta(days=1), id="at-end"),
        event(None, at=day + timedelta(hours=2), id="unpriced", model="house-model-7"),
    )
    ingest(client, other, event("5", at=day + timedelta(hours=1), id="other-org"))
    start, end = day.isoformat(), (day + timedelta(days=1)).isoformat()
    response = _csv(client, tenant.org_id, start, end, viewer_headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["id"] for r in rows] == ["inside-1", "inside-2", "unpriced"]
    header = response.text.splitlines()[0].split(",")
    assert header[:3] == ["id", "timestamp", "received_at"]
    assert {"model", "input_tokens", "cost_usd", "credits", "pricing", "license_id"} <= set(header)
    first = rows[0]
    assert first["cost_usd"] == "0.000000123"
    assert first["credits"] == "0.000012"  # 0.000000123 / 0.01, rounded to a micro-credit
    assert first["pricing"] == "provided"
    assert first["refresh_id"] == "run-1"
    assert first["license_id"] == str(tenant.license_id)
    assert datetime.fromisoformat(first["timestamp"]) == day
    assert rows[1]["cost_usd"] == "1.50"
    assert rows[1]["input_tokens"] == "1000"
    assert rows[2]["cost_usd"] == ""
    assert rows[2]["pricing"] == "unpriced"

    # Offsets mean the same instants.
    berlin_start = day.astimezone(ZoneInfo("Europe/Berlin")).isoformat()
    same = _csv(client, tenant.org_id, berlin_start, end, admin_headers)
    assert same.text == response.text
    empty = _csv(client, other.org_id, end, (day + timedelta(days=2)).isoformat(), admin_headers)
    assert empty.text.strip() == ",".join(header)


def test_csv_export_refuses_bad_ranges(client, admin_headers, make_tenant):
    tenant = make_tenant()
    at = "2026-01-10T00:00:00+00:00"
    response = _csv(client, tenant.org_id, at, at, admin_headers)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_range"
    assert _csv(client, tenant.org_id, at, "2026-01-09T00:00:00Z", admin_headers).status_code == (
        422
    )
    assert _csv(client, tenant.org_id, "2026-01-01T00:00:00", at, admin_headers).status_code == 422
    assert _csv(client, tenant.org_id, "yesterday", at, admin_headers).status_code == 422
    response = client.get(f"/api/token-usage/{tenant.org_id}/events.csv", headers=admin_headers)
    assert response.status_code == 422
    assert _csv(client, 999999, "2026-01-01T00:00:00Z", at, admin_headers).status_code == 404
    assert _csv(client, tenant.org_id, "2026-01-01T00:00:00Z", at, {}).status_code == 401


def test_csv_export_defuses_spreadsheet_formulas(client, admin_headers, make_tenant):
    tenant = make_tenant()
    now = NOW
    ingest(
        client,
        tenant,
        event(
            "1",
            at=now - timedelta(minutes=5),
            id='=HYPERLINK("http://x")',
            model="@SUM(A1)",
            refresh_id="+cmd",
        ),
    )
    start = (now - timedelta(hours=1)).isoformat()
    end = (now + timedelta(hours=1)).isoformat()
    rows = list(
        csv.DictReader(io.StringIO(_csv(client, tenant.org_id, start, end, admin_headers).text))
    )
    assert rows[0]["id"] == '\'=HYPERLINK("http://x")'
    assert rows[0]["model"] == "'@SUM(A1)"
    assert rows[0]["refresh_id"] == "'+cmd"
