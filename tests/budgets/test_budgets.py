"""Budget states through GET /api/v1/budget: from credits, from the USD budget, with holds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from fastapi.testclient import TestClient

from tests.conftest import NOW, budget, event, ingest, make_settings, usd, usd_budget_license, write
from tokenledger.app import create_app
from tokenledger.budgets.service import budget_states
from tokenledger.licenses.models import License
from tokenledger.organizations.models import Organization


def _hold(client, tenant, amount: str, **extra):  # type: ignore[no-untyped-def]
    return client.post(
        "/api/v1/reservations", json={"max_cost_usd": amount, **extra}, headers=tenant.headers
    )


def test_no_license_and_suspended(client, make_tenant, service_key):
    bare = make_tenant()
    state = budget(client, bare)
    assert state["state"] == "no_license"
    assert state["allowed"] is True
    assert state["license_id"] is None
    assert state["organization"] == bare.slug

    suspended = make_tenant(license={"status": "suspended"})
    state = budget(client, suspended)
    assert state["state"] == "suspended"
    assert state["allowed"] is False
    assert _hold(client, suspended, "1").status_code == 402

    # A service key names the organization, by slug or id; unknown is 404.
    response = client.get(
        "/api/v1/budget", params={"organization": suspended.slug}, headers=service_key
    )
    assert response.json()["state"] == "suspended"
    response = client.get(
        "/api/v1/budget", params={"organization": str(bare.org_id)}, headers=service_key
    )
    assert response.json()["state"] == "no_license"
    response = client.get("/api/v1/budget", params={"organization": "nope"}, headers=service_key)
    assert response.status_code == 404
    assert client.get("/api/v1/budget", headers=service_key).status_code == 422
    # An organization's key cannot look at another organization.
    response = client.get(
        "/api/v1/budget", params={"organization": suspended.slug}, headers=bare.headers
    )
    assert response.status_code == 403
    assert client.get("/api/v1/budget").status_code == 401


def test_states_from_credits_soft_and_hard(client, make_tenant):
    # 100 credits at 0.01 USD: 1 USD of credits; no USD budget.
    limits = {"credits_total": Decimal(100), "token_budget_usd": None}
    soft = make_tenant(license=limits)
    hard = make_tenant(license={**limits, "enforcement": "hard"})
    for tenant in (soft, hard):
        ingest(client, tenant, event("0.79"))
        state = budget(client, tenant)
        assert (state["state"], state["allowed"]) == ("ok", True)
        assert state["credits_used"] == "79.0"
        assert state["credits_remaining"] == "21.0"
        assert state["credits_total"] == "100.0"
        assert state["token_budget_usd"] is None
        ingest(client, tenant, event("0.01"))
        state = budget(client, tenant)
        assert (state["state"], state["allowed"]) == ("warning", True)
        ingest(client, tenant, event("0.2"))
        state = budget(client, tenant)
        assert state["state"] == "exhausted"
        assert state["credits_remaining"] == "0.0"
    assert budget(client, soft)["allowed"] is True
    assert budget(client, hard)["allowed"] is False
    # Usage of calls already made is recorded even past the limit.
    body = ingest(client, hard, event("0.5"))
    assert body["results"][0]["status"] == "created"
    assert budget(client, hard)["credits_used"] == "150.0"


def test_states_from_monthly_usd_budget(client, make_tenant):
    now = NOW  # 2026-11-18 12:00 UTC
    tenant = make_tenant(
        license={
            "credits_total": Decimal(0),  # no credit limit
            "token_budget_usd": Decimal(10),
            "valid_from": now - timedelta(days=90),
            "enforcement": "hard",
        }
    )
    last_month = datetime(2026, 10, 30, 12, tzinfo=UTC)
    ingest(client, tenant, event("9.5", at=last_month), event("7"))
    state = budget(client, tenant)
    assert (state["state"], state["allowed"]) == ("ok", True)
    assert state["budget_period"] == "monthly"
    assert state["period"] == "2026-11"
    assert state["spent_usd"] == "7.00"
    assert state["remaining_usd"] == "3.00"
    assert state["credits_total"] == "0.0"
    assert state["credits_remaining"] is None
    ingest(client, tenant, event("1"))
    assert budget(client, tenant)["state"] == "warning"
    ingest(client, tenant, event("2"))
    state = budget(client, tenant)
    assert (state["state"], state["allowed"]) == ("exhausted", False)
    assert state["remaining_usd"] == "0.00"


def test_states_from_usd_budget_over_the_license(client, make_tenant):
    now = NOW
    tenant = make_tenant(license=usd_budget_license(now, days_before=90))
    ingest(client, tenant, event("8.5", at=now - timedelta(days=60)))
    state = budget(client, tenant)
    assert state["state"] == "warning"
    assert state["period"] == "license"
    assert state["spent_usd"] == "8.50"
    ingest(client, tenant, event("1.5"))
    state = budget(client, tenant)
    assert (state["state"], state["allowed"]) == ("exhausted", True)  # soft


def test_holds_count_toward_the_state(client, make_tenant):
    tenant = make_tenant(license={"credits_total": Decimal(0), "token_budget_usd": Decimal(10)})
    ingest(client, tenant, event("7"))
    assert budget(client, tenant)["state"] == "ok"
    response = _hold(client, tenant, "1.5")
    assert response.status_code == 201, response.text
    state = budget(client, tenant)
    assert state["state"] == "warning"
    assert state["reserved_usd"] == "1.50"
    assert state["remaining_usd"] == "1.50"
    assert state["spent_usd"] == "7.00"
    assert _hold(client, tenant, "1.5").status_code == 201
    assert budget(client, tenant)["state"] == "exhausted"

    credits = make_tenant(license={"credits_total": Decimal(100), "token_budget_usd": None})
    assert _hold(client, credits, "0.85").status_code == 201
    state = budget(client, credits)
    assert state["state"] == "warning"
    assert state["credits_reserved"] == "85.0"
    assert state["credits_remaining"] == "15.0"
    assert state["credits_used"] == "0.0"


def test_a_changed_license_is_answered_at_once(client, make_tenant, admin_headers, database):
    # The budget check keeps licenses in memory; every change committed in this process
    # (through the API, or another Database of the process as the command line's) is in
    # the very next answer, however long the cache would otherwise keep them.
    tenant = make_tenant(license={"credits_total": Decimal(100), "token_budget_usd": None})
    ingest(client, tenant, event("0.79"))  # 79 credits at 0.01 USD
    state = budget(client, tenant)
    assert (state["state"], state["allowed"], state["credits_total"]) == ("ok", True, "100.0")
    response = client.patch(
        f"/api/licenses/{tenant.license_id}",
        json={"credits_total": "79", "enforcement": "hard"},
        headers=admin_headers,
    )
    assert response.status_code == 200, response.text
    state = budget(client, tenant)
    assert (state["state"], state["allowed"]) == ("exhausted", False)
    assert (state["credits_total"], state["credits_remaining"]) == ("79.0", "0.0")
    assert state["enforcement"] == "hard"

    response = client.patch(
        f"/api/licenses/{tenant.license_id}", json={"status": "suspended"}, headers=admin_headers
    )
    assert response.status_code == 200, response.text
    state = budget(client, tenant)
    assert (state["state"], state["allowed"], state["license_id"]) == ("suspended", False, None)

    # Changed outside the app's own database object, as the command line would.
    with write(database) as session:
        lic = session.get(License, tenant.license_id)
        assert lic is not None
        lic.status = "active"
        lic.token_budget_nano = 2 * 10**9  # 2 USD
        lic.credits_total_micro = 0  # no credit limit
    state = budget(client, tenant)
    assert (state["state"], state["allowed"]) == ("ok", True)
    assert (state["token_budget_usd"], state["spent_usd"]) == ("2.00", "0.79")
    assert (state["remaining_usd"], state["credits_total"]) == ("1.21", "0.0")

    # An organization read without a license gets one: the next answer has it.
    bare = make_tenant()
    assert budget(client, bare)["state"] == "no_license"
    response = client.post(
        "/api/licenses",
        json={
            "organization_id": bare.org_id,
            "credits_total": "10",
            "cost_per_credit": "0.01",
            "token_budget_usd": "1",
        },
        headers=admin_headers,
    )
    assert response.status_code == 201, response.text
    state = budget(client, bare)
    assert (state["state"], state["license_id"]) == ("ok", response.json()["id"])
    assert (state["credits_total"], state["token_budget_usd"]) == ("10.0", "1.00")


def test_state_follows_the_license_in_force(client, make_tenant, database):
    now = NOW
    later = make_tenant(license={"valid_from": now + timedelta(days=3)})
    assert budget(client, later)["state"] == "no_license"
    ended = make_tenant(
        license={"valid_from": now - timedelta(days=10), "valid_until": now - timedelta(days=1)}
    )
    assert budget(client, ended)["state"] == "no_license"


def test_forecast_from_the_last_seven_days(client, make_tenant):
    now = NOW  # the window is 2026-11-12 to 2026-11-18
    tenant = make_tenant(
        license=usd_budget_license(
            now,
            days_before=30,
            days_after=10,
            credits_total=2000,  # 20 USD of credits
            token_budget_usd=100,
        )
    )
    ingest(
        client,
        tenant,
        event("50", at=now - timedelta(days=20)),  # 2026-10-29: outside the window
        event("3", at=now - timedelta(days=5)),  # 2026-11-13
        event("4", at=now - timedelta(hours=2)),
    )
    forecast = budget(client, tenant)["forecast"]
    assert forecast["window_days"] == 7
    assert forecast["usd_per_day"] == "1.00"  # 7 USD in 7 days
    # 100 - 57 = 43 USD of budget left at 1 USD a day lasts 43 days, past the end of the
    # license (2026-11-28 12:00), the budget's period: no date, but 57 + 10 x 1 = 67 by
    # then. 20 USD of credits against 57 spent: gone now.
    assert forecast["budget_exhausted_at"] is None
    assert forecast["budget_exhausted_before_period_end"] is False
    assert forecast["period_end"] == "2026-11-28T12:00:00+00:00"
    assert forecast["projected_spent_usd"] == "67.00"
    assert forecast["credits_exhausted_at"] == "2026-11-18T12:00:00+00:00"

    idle = make_tenant(license={})
    forecast = budget(client, idle)["forecast"]
    assert forecast["usd_per_day"] == "0.00"
    assert forecast["budget_exhausted_at"] is None
    assert forecast["credits_exhausted_at"] is None
    assert budget(client, make_tenant())["forecast"] is None


def test_forecast_before_the_period_ends(client, make_tenant):
    now = NOW
    tenant = make_tenant(license=usd_budget_license(now, days_before=30, days_after=5))
    ingest(client, tenant, event("3.5", at=now - timedelta(days=1)))
    forecast = budget(client, tenant)["forecast"]
    assert forecast["usd_per_day"] == "0.50"
    assert forecast["budget_exhausted_before_period_end"] is False  # 13 days at that pace
    ingest(client, tenant, event("3.5"))
    forecast = budget(client, tenant)["forecast"]
    assert usd(forecast["usd_per_day"]) == Decimal(1)
    assert forecast["budget_exhausted_before_period_end"] is True  # 3 days, 5 left


def test_forecast_window_is_seven_calendar_days_across_daylight_saving(
    database_url, database, make_tenant
):
    berlin = ZoneInfo("Europe/Berlin")
    # Sunday 2026-03-29, when the EU changes to summer time (the day has 23 hours).
    sunday = datetime(2026, 3, 29, 12, tzinfo=berlin)
    # 00:30 the day after the change (2026-03-29 22:30 UTC); the window is the 7 calendar
    # days ending today, 2026-03-24 to 2026-03-30, fewer than 7 x 24 hours.
    now = datetime(2026, 3, 30, 0, 30, tzinfo=berlin).astimezone(UTC)
    assert now == datetime(2026, 3, 29, 22, 30, tzinfo=UTC)
    tenant = make_tenant(license={"valid_from": sunday - timedelta(days=30)})
    app = create_app(
        make_settings(database_url, billing_timezone="Europe/Berlin"), clock=lambda: now
    )
    with TestClient(app) as client:
        ingest(
            client,
            tenant,
            event("7", at=sunday - timedelta(days=6)),  # 2026-03-23: outside the window
            event("7", at=sunday - timedelta(days=4)),  # 2026-03-25
        )
        # The route's forecast is of the app's now: 7 USD in 7 days.
        assert budget(client, tenant)["forecast"]["usd_per_day"] == "1.00"
    with database.session(write=False) as session:
        org = session.get(Organization, tenant.org_id)
        (state,) = budget_states(session, [org], berlin, now, forecast=True)
    assert state["forecast"]["usd_per_day"] == "1.00"


def test_a_monthly_forecast_stops_at_the_reset(client, make_tenant):
    """Issue 15, item 16: a $60 monthly budget at $0.71 a day does not run out before
    the month resets; the forecast says what the month comes to instead."""
    now = NOW  # 2026-11-18 12:00 UTC; the month resets 2026-12-01 00:00 UTC
    tenant = make_tenant(
        license={
            "credits_total": Decimal(0),  # no credit limit
            "token_budget_usd": Decimal(60),
            "budget_period": "monthly",
            "valid_from": now - timedelta(days=40),
        }
    )
    # $0.71 on each of the 7 days of the window (2026-11-12 .. 2026-11-18).
    ingest(client, tenant, *(event("0.71", at=now - timedelta(days=d, hours=1)) for d in range(7)))
    forecast = budget(client, tenant)["forecast"]
    assert forecast["usd_per_day"] == "0.71"
    # 60 - 4.97 = 55.03 left at 0.71 a day is 77.5 days: past the reset, so no date.
    assert forecast["budget_exhausted_at"] is None
    assert forecast["budget_exhausted_before_period_end"] is False
    assert forecast["period_end"] == "2026-12-01T00:00:00+00:00"
    # 12.5 days to the reset: 4.97 + 0.71 x 12.5 = 4.97 + 8.875 = 13.845.
    assert forecast["projected_spent_usd"] == "13.845"
    assert forecast["credits_exhausted_at"] is None

    # At 7 USD a day the budget runs out within the month: 60 - 49 = 11 USD left,
    # 11 / 7 days = 1 day 13 h 42 min 51.428571 s after now.
    fast = make_tenant(
        license={
            "credits_total": Decimal(0),
            "token_budget_usd": Decimal(60),
            "valid_from": now - timedelta(days=40),
        }
    )
    ingest(client, fast, *(event("7", at=now - timedelta(days=d, hours=1)) for d in range(7)))
    forecast = budget(client, fast)["forecast"]
    assert forecast["budget_exhausted_at"] == "2026-11-20T01:42:51.428571+00:00"
    assert forecast["budget_exhausted_before_period_end"] is True
    # 49 + 7 x 12.5 = 136.5 by the reset, had nothing stopped it.
    assert forecast["projected_spent_usd"] == "136.50"


def test_credits_never_run_out_after_the_license_ends(client, make_tenant):
    now = NOW
    # 1000 credits at 0.01 = 10 USD; the license ends in 5 days (2026-11-23 12:00 UTC).
    tenant = make_tenant(
        license={
            "token_budget_usd": None,
            "budget_period": "license",
            "valid_from": now - timedelta(days=30),
            "valid_until": now + timedelta(days=5),
        }
    )
    ingest(client, tenant, *(event("0.5", at=now - timedelta(days=d, hours=1)) for d in range(7)))
    forecast = budget(client, tenant)["forecast"]
    assert forecast["usd_per_day"] == "0.50"
    # 10 - 3.5 = 6.5 USD of credits left at 0.5 a day is 13 days: after the license ends.
    assert forecast["credits_exhausted_at"] is None
    assert forecast["credits_period_end"] == "2026-11-23T12:00:00+00:00"
    # 350 credits used, 50 a day for 5 more days: 600 of 1000 when the license ends.
    assert forecast["projected_credits_used"] == "600.0"
    assert forecast["budget_exhausted_at"] is None

    # At 2 USD a day (200 credits): 1000 - 1400 is gone already, now.
    ingest(client, tenant, *(event("1.5", at=now - timedelta(days=d, hours=2)) for d in range(7)))
    forecast = budget(client, tenant)["forecast"]
    assert forecast["credits_exhausted_at"] == "2026-11-18T12:00:00+00:00"
