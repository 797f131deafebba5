"""The origin's four routes: overview, monthly rows, current month, budget update."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.conftest import NOW, budget, event, ingest, make_settings, write
from tokenledger.app import create_app
from tokenledger.audit.models import AuditEntry
from tokenledger.licenses.models import CreditAdjustment, License
from tokenledger.organizations.models import Organization
from tokenledger.usage import answers, queries

ORIGIN_OVERVIEW_FIELDS = {
    "org_id",
    "org_name",
    "org_slug",
    "credits_total",
    "credits_used",
    "credits_remaining",
    "credits_percent_used",
    "token_budget_usd",
    "total_cost_usd",
    "budget_percent_used",
    "budget_warning_percent",
    "total_input_tokens",
    "total_output_tokens",
    "total_api_calls",
    "total_refreshes",
    "cost_per_credit",
}
ORIGIN_MONTHLY_FIELDS = {
    "year_month",
    "input_tokens",
    "output_tokens",
    "cache_creation_tokens",
    "cache_read_tokens",
    "total_cost_usd",
    "api_calls",
    "refresh_count",
}
ORIGIN_CURRENT_USAGE_FIELDS = {
    "input_tokens",
    "output_tokens",
    "total_cost_usd",
    "api_calls",
    "refresh_count",
}
ORIGIN_CURRENT_BUDGET_FIELDS = {
    "credits_total",
    "credits_used",
    "credits_remaining",
    "credits_percent_used",
    "token_budget_usd",
    "cost_per_credit",
    "budget_warning_percent",
}


def _refresh(client: TestClient, tenant, refresh_id: str, status: str) -> None:  # type: ignore[no-untyped-def]
    response = client.put(
        f"/api/v1/refreshes/{refresh_id}", json={"status": status}, headers=tenant.headers
    )
    assert response.status_code == 200, response.text


def _overview(client: TestClient, headers: dict[str, str]) -> dict[int, dict]:  # type: ignore[type-arg]
    response = client.get("/api/token-usage/overview", headers=headers)
    assert response.status_code == 200, response.text
    return {row["org_id"]: row for row in response.json()}


def test_overview_one_row_per_org_from_active_license_without_multiplied_sums(
    client, admin_headers, database, make_tenant
):
    now = NOW  # 2026-11-18 12:00 UTC: "this month" is 2026-11
    tenant = make_tenant(name="Acme", slug="acme")
    with write(database) as session:
        expired = License(
            organization_id=tenant.org_id,
            status="expired",
            valid_from=now - timedelta(days=200),
            valid_until=now - timedelta(days=100),
            credits_total_micro=1000 * 10**6,
            cost_per_credit_nano=10**7,
            token_budget_nano=100 * 10**9,
            budget_warning_percent=90,
            credits_used_micro=0,
        )
        active = License(
            organization_id=tenant.org_id,
            status="active",
            valid_from=now - timedelta(days=90),
            credits_total_micro=2000 * 10**6,
            cost_per_credit_nano=2 * 10**7,  # 0.02 USD per credit
            token_budget_nano=50 * 10**9,
            budget_warning_percent=75,
            credits_used_micro=0,
        )
        session.add_all([expired, active])
        session.flush()
        active_id = active.id
    previous_month = datetime(2026, 10, 31, tzinfo=UTC)
    ingest(
        client,
        tenant,
        # 2026-06-21: in the expired license's term (2026-05-02 to 2026-08-10).
        event("10", at=now - timedelta(days=150), input_tokens=100, output_tokens=10),
        event("7", at=previous_month, input_tokens=200, output_tokens=20),
        event("5.126", input_tokens=300, output_tokens=30, api_calls=2),
    )
    # Three runs of two calls each: two completed, one failed (still paid for).
    for run, status in (("run-1", "completed"), ("run-2", "completed"), ("run-3", "failed")):
        _refresh(client, tenant, run, "running")
        ingest(client, tenant, *(event("1", refresh_id=run) for _ in range(2)))
        _refresh(client, tenant, run, status)
    bare = make_tenant(name="Bare", slug="bare")
    ingest(client, bare, event("0.004"), event("0.002", input_tokens=5, output_tokens=1))
    idle = make_tenant(name="Idle", slug="idle")

    rows = _overview(client, admin_headers)
    assert set(rows) == {tenant.org_id, bare.org_id, idle.org_id}
    row = rows[tenant.org_id]
    assert set(row) >= ORIGIN_OVERVIEW_FIELDS
    spent_this_month = Decimal("5.126") + 6
    used_credits = (7 + spent_this_month) / Decimal("0.02")  # events of the active license
    assert used_credits == Decimal("906.3")
    assert {k: row[k] for k in ORIGIN_OVERVIEW_FIELDS} == {
        "org_id": tenant.org_id,
        "org_name": "Acme",
        "org_slug": "acme",
        "credits_total": 2000,
        "credits_used": 906.3,
        "credits_remaining": 1093,
        "credits_percent_used": 45.3,
        "token_budget_usd": 50,
        "total_cost_usd": 28.13,  # 10 + 7 + 5.126 + 6, every event once
        "budget_percent_used": 22.3,  # 11.126 of 50 this month
        "budget_warning_percent": 75,
        "total_input_tokens": 100 + 200 + 300 + 6 * 1000,
        "total_output_tokens": 10 + 20 + 30 + 6 * 100,
        "total_api_calls": 1 + 1 + 2 + 6,
        "total_refreshes": 2,
        "cost_per_credit": 0.02,
    }
    assert row["license_id"] == active_id
    assert row["cost_this_month_usd"] == 11.13

    assert {k: rows[bare.org_id][k] for k in ORIGIN_OVERVIEW_FIELDS} == {
        "org_id": bare.org_id,
        "org_name": "Bare",
        "org_slug": "bare",
        "credits_total": 0,
        "credits_used": 0,
        "credits_remaining": None,
        "credits_percent_used": None,
        "token_budget_usd": None,
        "total_cost_usd": 0.01,
        "budget_percent_used": None,
        "budget_warning_percent": 80,
        "total_input_tokens": 1005,
        "total_output_tokens": 101,
        "total_api_calls": 2,
        "total_refreshes": 0,
        "cost_per_credit": None,
    }
    idle_row = rows[idle.org_id]
    assert idle_row["total_cost_usd"] == 0
    assert idle_row["total_refreshes"] == 0
    assert idle_row["total_input_tokens"] == 0


def test_overview_rounding_of_usd_and_credits(client, admin_headers, make_tenant):
    tenant = make_tenant(
        license={
            "credits_total": Decimal("333.5"),
            "cost_per_credit": Decimal("0.003"),
            "token_budget_usd": Decimal("7.77"),
        }
    )
    ingest(client, tenant, event("0.123456789"))
    row = _overview(client, admin_headers)[tenant.org_id]
    # 0.123456789 / 0.003 = 41.152263 credits (rounded once, to a micro-credit).
    assert row["credits_used"] == 41.2
    assert row["credits_total"] == 333.5
    assert row["credits_remaining"] == 292
    assert row["credits_percent_used"] == 12.3
    assert row["total_cost_usd"] == 0.12
    assert row["token_budget_usd"] == 7.77
    assert row["budget_percent_used"] == 1.6
    assert row["cost_per_credit"] == 0.003
    for name in ("credits_used", "total_cost_usd", "credits_percent_used"):
        assert isinstance(row[name], float), name


def test_overview_budget_over_license_period_counts_since_license_start(
    client, admin_headers, make_tenant
):
    now = NOW
    tenant = make_tenant(
        license={
            "token_budget_usd": Decimal(20),
            "budget_period": "license",
            "valid_from": now - timedelta(days=100),
        }
    )
    monthly = make_tenant(
        license={"token_budget_usd": Decimal(20), "valid_from": now - timedelta(days=100)}
    )
    for t in (tenant, monthly):
        ingest(client, t, event("3", at=now - timedelta(days=60)), event("2"))
    rows = _overview(client, admin_headers)
    assert rows[tenant.org_id]["budget_percent_used"] == 25.0
    assert rows[tenant.org_id]["budget_period"] == "license"
    assert rows[monthly.org_id]["budget_percent_used"] == 10.0
    assert rows[monthly.org_id]["total_cost_usd"] == 5.0


def test_monthly_rows_newest_first_and_404_for_unknown_org(client, admin_headers, make_tenant):
    now = NOW
    tenant = make_tenant()
    other = make_tenant()
    two_back = datetime(2026, 9, 28, tzinfo=UTC)  # no usage in 2026-10
    ingest(
        client,
        tenant,
        event("1.005", at=two_back, cache_creation_input_tokens=40, cache_read_input_tokens=60),
        event("2", refresh_id="r1"),
        event("0.5", at=now - timedelta(minutes=1), api_calls=3),
    )
    ingest(client, other, event("100"))
    _refresh(client, tenant, "r1", "completed")
    response = client.get(f"/api/token-usage/{tenant.org_id}", headers=admin_headers)
    assert response.status_code == 200
    rows = response.json()
    assert [r["year_month"] for r in rows] == ["2026-11", "2026-09"]
    assert set(rows[0]) >= ORIGIN_MONTHLY_FIELDS
    assert {k: rows[0][k] for k in ORIGIN_MONTHLY_FIELDS} == {
        "year_month": "2026-11",
        "input_tokens": 2000,
        "output_tokens": 200,
        "cache_creation_tokens": 0,
        "cache_read_tokens": 0,
        "total_cost_usd": 2.5,
        "api_calls": 4,
        "refresh_count": 1,
    }
    assert rows[1]["total_cost_usd"] == 1.0  # 1.005 rounds half to even
    assert rows[1]["cache_creation_tokens"] == 40
    assert rows[1]["cache_read_tokens"] == 60

    response = client.get("/api/token-usage/999999", headers=admin_headers)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "organization_not_found"
    response = client.get("/api/token-usage/999999/current", headers=admin_headers)
    assert response.status_code == 404


def test_routes_need_a_login_and_viewers_may_read(client, viewer_headers, make_tenant):
    tenant = make_tenant(license={})
    for path in (
        "/api/token-usage/overview",
        f"/api/token-usage/{tenant.org_id}",
        f"/api/token-usage/{tenant.org_id}/current",
        "/api/dashboard/stats",
    ):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers=tenant.headers).status_code == 403, path
        assert client.get(path, headers=viewer_headers).status_code == 200, path


# The first half hour of a Berlin month, when UTC is still in the month before: in winter
# time (UTC+1) and in summer time (UTC+2, days after the change of 2026-03-29).
BERLIN_MONTH_STARTS = [
    # (now, the Berlin month's first instant in UTC, this Berlin month, the one before)
    pytest.param(
        datetime(2026, 11, 30, 23, 30, tzinfo=UTC),
        datetime(2026, 11, 30, 23, 0, tzinfo=UTC),
        "2026-12",
        "2026-11",
        id="december-winter-time",
    ),
    pytest.param(
        datetime(2026, 3, 31, 22, 30, tzinfo=UTC),
        datetime(2026, 3, 31, 22, 0, tzinfo=UTC),
        "2026-04",
        "2026-03",
        id="april-summer-time",
    ),
]


@pytest.mark.parametrize(("now", "start", "this_month", "previous"), BERLIN_MONTH_STARTS)
def test_current_month_in_billing_time_zone(
    database_url, admin_headers, make_tenant, now, start, this_month, previous
):
    app = create_app(
        make_settings(database_url, billing_timezone="Europe/Berlin"), clock=lambda: now
    )
    tenant = make_tenant(
        license={
            "token_budget_usd": Decimal(10),
            "credits_total": Decimal(100),
            "cost_per_credit": Decimal("0.1"),
            "valid_from": now - timedelta(days=60),
        }
    )
    with TestClient(app) as client:
        # In UTC all three are in the previous month; in Berlin the second one is in this
        # month, and so is the third, stamped at receipt (the clock's now).
        posted = ingest(
            client,
            tenant,
            event("4", at=start - timedelta(minutes=30), input_tokens=11),
            event("1.5", at=start + timedelta(seconds=1), input_tokens=22, output_tokens=3),
            event("0.5", input_tokens=7, output_tokens=1),
        )
        # The budget state after the batch is of the group commit's now: this month too.
        assert (posted["budgets"][0]["period"], posted["budgets"][0]["spent_usd"]) == (
            this_month,
            "2.00",
        )
        response = client.get(f"/api/token-usage/{tenant.org_id}/current", headers=admin_headers)
        assert response.status_code == 200
        body = response.json()
        months = client.get(f"/api/token-usage/{tenant.org_id}", headers=admin_headers).json()
    assert body["year_month"] == this_month
    assert set(body["usage"]) >= ORIGIN_CURRENT_USAGE_FIELDS
    assert set(body["budget"]) >= ORIGIN_CURRENT_BUDGET_FIELDS
    assert {k: body["usage"][k] for k in ORIGIN_CURRENT_USAGE_FIELDS} == {
        "input_tokens": 22 + 7,
        "output_tokens": 3 + 1,
        "total_cost_usd": 2.0,  # 1.5 + 0.5
        "api_calls": 2,
        "refresh_count": 0,
    }
    assert {k: body["budget"][k] for k in ORIGIN_CURRENT_BUDGET_FIELDS} == {
        "credits_total": 100,
        "credits_used": 60.0,  # (4 + 1.5 + 0.5) / 0.1: over the license, not the month
        "credits_remaining": 40,
        "credits_percent_used": 60.0,
        "token_budget_usd": 10,
        "cost_per_credit": 0.1,
        "budget_warning_percent": 80,
    }
    assert body["budget"]["budget_percent_used"] == 20.0  # 2 of 10 in this Berlin month
    assert body["budget"]["spent_usd"] == 2.0
    assert [(m["year_month"], m["total_cost_usd"]) for m in months] == [
        (this_month, 2.0),
        (previous, 4.0),
    ]


def test_current_without_license_or_usage(client, admin_headers, make_tenant):
    tenant = make_tenant()
    body = client.get(f"/api/token-usage/{tenant.org_id}/current", headers=admin_headers).json()
    assert body["usage"] == {
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_creation_tokens": 0,
        "cache_read_tokens": 0,
        "total_cost_usd": 0,
        "api_calls": 0,
        "refresh_count": 0,
    }
    assert body["budget"]["credits_total"] is None
    assert body["budget"]["credits_used"] == 0
    assert body["budget"]["credits_remaining"] is None
    assert body["budget"]["token_budget_usd"] is None
    assert body["budget"]["cost_per_credit"] is None
    assert body["budget"]["budget_warning_percent"] == 80
    assert body["budget"]["state"] == "no_license"


# --- PUT /api/token-usage/budget/{license_id} ---


def _put(client: TestClient, license_id: int, body: object, headers: dict[str, str]):  # type: ignore[no-untyped-def]
    if isinstance(body, (bytes, str)):
        return client.put(
            f"/api/token-usage/budget/{license_id}",
            content=body,
            headers={**headers, "Content-Type": "application/json"},
        )
    return client.put(f"/api/token-usage/budget/{license_id}", json=body, headers=headers)


def test_budget_update_sets_the_origin_keys(client, admin_headers, make_tenant):
    tenant = make_tenant(license={})
    body = {
        "token_budget_usd": "250.5",
        "credits_total": 5000,
        "cost_per_credit": 0.025,
        "budget_warning_percent": 90,
    }
    response = _put(client, tenant.license_id, body, admin_headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"ok": True}
    lic = client.get(f"/api/licenses/{tenant.license_id}", headers=admin_headers).json()
    assert Decimal(lic["token_budget_usd"]) == Decimal("250.5")
    assert Decimal(lic["credits_total"]) == 5000
    assert Decimal(lic["cost_per_credit"]) == Decimal("0.025")
    assert lic["budget_warning_percent"] == 90
    assert Decimal(lic["credits_used"]) == 0

    # Only what is given changes; the token budget may be removed with null.
    assert _put(client, tenant.license_id, {"token_budget_usd": None}, admin_headers).json() == {
        "ok": True
    }
    lic = client.get(f"/api/licenses/{tenant.license_id}", headers=admin_headers).json()
    assert lic["token_budget_usd"] is None
    assert Decimal(lic["credits_total"]) == 5000

    audit = client.get(
        "/api/audit-log",
        params={"entity_type": "license", "entity_id": str(tenant.license_id)},
        headers=admin_headers,
    ).json()["items"]
    updates = [e for e in audit if e["action"] == "license.budget_update"]
    assert len(updates) == 2
    assert updates[-1]["actor"] == "admin@example.com"
    assert Decimal(updates[-1]["before"]["credits_total"]) == 1000
    assert Decimal(updates[-1]["after"]["credits_total"]) == 5000


BAD_BUDGET_BODIES: list[object] = [
    {"foo": 1},
    {"credits_total": 10, "status": "active"},
    {"credits_used": 5, "enforcement": "hard"},
    {"credits_total": -1},
    {"token_budget_usd": "-0.01"},
    {"credits_used": -5},
    {"credits_total": "NaN"},
    {"token_budget_usd": "Infinity"},
    b'{"credits_total": NaN}',
    b'{"token_budget_usd": Infinity}',
    {"credits_total": "many"},
    {"token_budget_usd": "12,50"},
    {"credits_total": True},
    {"cost_per_credit": False},
    {"budget_warning_percent": True},
    {"budget_warning_percent": 0},
    {"budget_warning_percent": 101},
    {"budget_warning_percent": 50.5},
    {"budget_warning_percent": "80"},
    {"cost_per_credit": 0},
    {"credits_total": 10**13},
    {"token_budget_usd": "1e12"},
    {"credits_used": "0.0000001"},
    {"credits_total": None},
    {"credits_used": None},
    {"credits_total": [1]},
    [],
    b"not json",
]


def test_budget_update_refuses_bad_input(client, admin_headers, make_tenant):
    tenant = make_tenant(license={})
    for body in BAD_BUDGET_BODIES:
        response = _put(client, tenant.license_id, body, admin_headers)
        assert response.status_code == 422, (body, response.text)
    lic = client.get(f"/api/licenses/{tenant.license_id}", headers=admin_headers).json()
    assert Decimal(lic["credits_total"]) == 1000
    assert Decimal(lic["cost_per_credit"]) == Decimal("0.01")
    assert Decimal(lic["token_budget_usd"]) == 100
    assert Decimal(lic["credits_used"]) == 0
    assert lic["budget_warning_percent"] == 80


def test_budget_update_empty_unknown_license_and_viewer(
    client, admin_headers, viewer_headers, make_tenant
):
    tenant = make_tenant(license={})
    response = _put(client, tenant.license_id, {}, admin_headers)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "no_fields"
    response = _put(client, 999999, {"credits_total": 5}, admin_headers)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "license_not_found"
    response = _put(client, tenant.license_id, {"credits_total": 5}, viewer_headers)
    assert response.status_code == 403
    response = _put(client, tenant.license_id, {"credits_total": 5}, tenant.headers)
    assert response.status_code == 403
    assert _put(client, tenant.license_id, {"credits_total": 5}, {}).status_code == 401
    lic = client.get(f"/api/licenses/{tenant.license_id}", headers=admin_headers).json()
    assert Decimal(lic["credits_total"]) == 1000


def test_setting_credits_used_writes_an_adjustment_and_an_audit_entry(
    client, admin_headers, database, make_tenant
):
    tenant = make_tenant(license={})  # 0.01 USD per credit
    ingest(client, tenant, event("1.25"))  # 125 credits
    response = _put(client, tenant.license_id, {"credits_used": "100.5"}, admin_headers)
    assert response.status_code == 200, response.text
    assert budget(client, tenant)["credits_used"] == "100.5"

    with database.session(write=False) as session:
        adjustments = session.scalars(
            select(CreditAdjustment).where(CreditAdjustment.license_id == tenant.license_id)
        ).all()
        assert [(a.delta_micro, a.actor) for a in adjustments] == [
            (-24_500_000, "admin@example.com")
        ]
        entries = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "license.credits_adjustment")
        ).all()
        assert len(entries) == 1
        assert entries[0].entity_id == str(tenant.license_id)
        assert entries[0].before == {"credits_used": "125.0"}
        assert entries[0].after == {"credits_used": "100.5", "delta": "-24.5"}
        assert entries[0].actor == "admin@example.com"
        assert entries[0].client_address

    # Later usage adds to the adjusted figure: nothing is overwritten.
    ingest(client, tenant, event("0.5"))
    assert budget(client, tenant)["credits_used"] == "150.5"
    row = _overview(client, admin_headers)[tenant.org_id]
    assert row["credits_used"] == 150.5
    assert row["total_cost_usd"] == 1.75  # cost is never adjusted


def test_ids_out_of_range_are_refused_not_a_server_error(app, admin_headers, make_tenant):
    with TestClient(app, raise_server_exceptions=False) as client:
        _out_of_range(client, admin_headers, make_tenant)


def _out_of_range(client: TestClient, admin_headers: dict[str, str], make_tenant) -> None:  # type: ignore[no-untyped-def]
    huge = 10**20
    for method, path in (
        ("GET", f"/api/token-usage/{huge}"),
        ("GET", f"/api/token-usage/{huge}/current"),
        ("GET", f"/api/token-usage/{huge}/models"),
        ("GET", f"/api/token-usage/{huge}/daily"),
        (
            "GET",
            f"/api/token-usage/{huge}/events.csv?from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z",
        ),
        ("PUT", f"/api/token-usage/budget/{huge}"),
        ("GET", f"/api/alerts?organization_id={huge}"),
        ("DELETE", f"/api/webhooks/{huge}"),
        ("GET", "/api/token-usage/0"),
        ("GET", "/api/token-usage/-1/current"),
    ):
        response = client.request(method, path, json={"credits_total": 1}, headers=admin_headers)
        assert response.status_code == 422, (method, path, response.text)
    tenant = make_tenant(license={})
    assert client.get(f"/api/token-usage/{tenant.org_id}", headers=admin_headers).status_code == 200


def test_budget_of_an_organization_id_out_of_range_is_404(app, service_key):
    with TestClient(app, raise_server_exceptions=False) as client:
        for ref in ("99999999999", str(10**20)):
            response = client.get(
                "/api/v1/budget", params={"organization": ref}, headers=service_key
            )
            assert response.status_code == 404, (ref, response.text)


def test_figures_are_of_the_month_of_the_instant_asked_for(client, database, make_tenant):
    then = datetime(2026, 10, 30, tzinfo=UTC)  # the event "1" is stamped at NOW, in 2026-11
    tenant = make_tenant(
        license={"token_budget_usd": Decimal(10), "valid_from": then - timedelta(days=30)}
    )
    ingest(client, tenant, event("3", at=then - timedelta(hours=1)), event("1"))
    with database.session(write=False) as session:
        org = session.get(Organization, tenant.org_id)
        assert org is not None
        body = answers.current_json(queries.current(session, org, ZoneInfo("UTC"), then))
        (row,) = answers.overview_json(queries.organization_rows(session, ZoneInfo("UTC"), then))
    assert body["year_month"] == "2026-10"
    assert body["usage"]["total_cost_usd"] == 3.0
    assert body["budget"]["spent_usd"] == 3.0
    assert body["budget"]["budget_percent_used"] == 30.0
    assert row["budget_percent_used"] == 30.0
    assert row["cost_this_month_usd"] == 3.0


def test_overview_state_is_the_budget_state(client, admin_headers, make_tenant):
    now = NOW
    suspended = make_tenant(license={"status": "suspended"})
    ended = make_tenant(
        license={"valid_from": now - timedelta(days=10), "valid_until": now - timedelta(days=1)}
    )
    exhausted = make_tenant(license={"credits_total": Decimal(10)})
    ingest(client, exhausted, event("0.1"))
    rows = _overview(client, admin_headers)
    for tenant in (suspended, ended, exhausted):
        assert rows[tenant.org_id]["state"] == budget(client, tenant)["state"]
    assert rows[suspended.org_id]["state"] == "suspended"
    assert rows[ended.org_id]["state"] == "no_license"
    assert rows[exhausted.org_id]["state"] == "exhausted"
