"""Threshold alerts: fired once per license, type and period, also under concurrency."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
from sqlalchemy import select, update

from tests.conftest import NOW, event, ingest, serve, usd_budget_license
from tokenledger.alerts.models import Alert


def _alerts(database, license_id: int) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    with database.session(write=False) as session:
        rows = session.execute(
            select(Alert.type, Alert.period)
            .where(Alert.license_id == license_id)
            .order_by(Alert.id)
        ).all()
    return [(t, p) for t, p in rows]


def _thresholds(database, license_id: int) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """The alerts but the forecast, which depends on how many days the month has left."""
    return [a for a in _alerts(database, license_id) if a[0] != "budget.forecast"]


def test_credit_thresholds_fire_once_in_the_batch_that_crosses_them(client, database, make_tenant):
    tenant = make_tenant(license={"credits_total": Decimal(100), "token_budget_usd": None})
    ingest(client, tenant, event("0.79"))
    assert _alerts(database, tenant.license_id) == []
    body = ingest(client, tenant, event("0.01"))
    assert _alerts(database, tenant.license_id) == [("credits.warning", "license")]
    # The response's budget state is the one after the batch.
    assert body["budgets"][0]["state"] == "warning"
    assert body["budgets"][0]["credits_used"] == "80.0"
    ingest(client, tenant, event("0.1"))
    assert _alerts(database, tenant.license_id) == [("credits.warning", "license")]
    body = ingest(client, tenant, event("0.1"))
    assert body["budgets"][0]["state"] == "exhausted"
    assert _alerts(database, tenant.license_id) == [
        ("credits.warning", "license"),
        ("credits.exhausted", "license"),
    ]
    ingest(client, tenant, event("5"), event("5"))
    assert len(_alerts(database, tenant.license_id)) == 2


def test_one_batch_over_both_thresholds_fires_both(client, database, make_tenant):
    tenant = make_tenant(license={"credits_total": Decimal(100), "token_budget_usd": None})
    ingest(client, tenant, event("0.5"), event("0.7"))
    assert sorted(_alerts(database, tenant.license_id)) == [
        ("credits.exhausted", "license"),
        ("credits.warning", "license"),
    ]


def test_usd_budget_alerts_carry_the_month(client, database, make_tenant):
    now = NOW  # 2026-11-18 12:00 UTC
    month = "2026-11"
    tenant = make_tenant(
        license={
            "credits_total": Decimal(0),
            "token_budget_usd": Decimal(10),
            "valid_from": now - timedelta(days=90),
        }
    )
    last_month = datetime(2026, 10, 29, 12, tzinfo=UTC)
    previous = "2026-10"
    # Back-dated spend belongs to its own month, not to this month's budget: 9 of 10 USD
    # is that month's warning.
    ingest(client, tenant, event("9", at=last_month))
    assert _thresholds(database, tenant.license_id) == [("budget.warning", previous)]
    ingest(client, tenant, event("7.99"))
    assert _thresholds(database, tenant.license_id) == [("budget.warning", previous)]
    ingest(client, tenant, event("0.01"))
    assert _thresholds(database, tenant.license_id) == [
        ("budget.warning", previous),
        ("budget.warning", month),
    ]
    ingest(client, tenant, event("2"))
    assert _thresholds(database, tenant.license_id) == [
        ("budget.warning", previous),
        ("budget.warning", month),
        ("budget.exhausted", month),
    ]
    ingest(client, tenant, event("2"))
    assert len(_thresholds(database, tenant.license_id)) == 3

    with database.session(write=False) as session:
        alert = session.scalars(
            select(Alert).where(Alert.license_id == tenant.license_id, Alert.period == month)
        ).first()
        assert alert is not None
        assert alert.organization_id == tenant.org_id
        assert alert.details["token_budget_usd"] == "10.00"
        assert alert.details["budget_period"] == "monthly"


def test_lowering_the_limit_fires_the_alert(client, database, admin_headers, make_tenant):
    tenant = make_tenant(license={"credits_total": Decimal(1000), "token_budget_usd": None})
    ingest(client, tenant, event("1"))  # 100 credits
    assert _alerts(database, tenant.license_id) == []
    response = client.put(
        f"/api/token-usage/budget/{tenant.license_id}",
        json={"credits_total": 110},
        headers=admin_headers,
    )
    assert response.status_code == 200
    assert _alerts(database, tenant.license_id) == [("credits.warning", "license")]


def test_budget_forecast_alert(client, database, make_tenant):
    now = NOW
    tenant = make_tenant(license=usd_budget_license(now, days_before=30, days_after=5))
    ingest(client, tenant, event("0.7", at=now - timedelta(days=3)))  # 0.10 a day: 93 days
    assert _alerts(database, tenant.license_id) == []
    ingest(client, tenant, event("6.3"))  # 1 USD a day, 3 USD left: 3 days, 5 left
    assert _alerts(database, tenant.license_id) == [("budget.forecast", "license")]
    ingest(client, tenant, event("0.1"))
    assert _alerts(database, tenant.license_id) == [("budget.forecast", "license")]


def test_list_alerts_newest_first_with_filters(client, admin_headers, viewer_headers, make_tenant):
    first = make_tenant(license={"credits_total": Decimal(100), "token_budget_usd": None})
    second = make_tenant(license={"credits_total": Decimal(0), "token_budget_usd": Decimal(1)})
    ingest(client, first, event("0.9"))
    ingest(client, second, event("1"))
    ingest(client, first, event("0.1"))
    response = client.get("/api/alerts", headers=viewer_headers)
    assert response.status_code == 200
    page = response.json()
    assert page["total"] == 4
    items = page["items"]
    assert [i["type"] for i in items[:1]] == ["credits.exhausted"]
    assert {(i["type"], i["organization_id"]) for i in items[1:3]} == {
        ("budget.warning", second.org_id),
        ("budget.exhausted", second.org_id),
    }
    assert items[3]["type"] == "credits.warning"
    created = [i["created_at"] for i in items]
    assert created == sorted(created, reverse=True)
    for item in items:
        assert {"type", "organization_id", "license_id", "period", "created_at"} <= set(item)
    assert items[0]["license_id"] == first.license_id
    assert items[0]["period"] == "license"
    assert items[1]["period"] == "2026-11"  # the month of NOW, when the events came

    response = client.get(
        "/api/alerts", params={"organization_id": second.org_id}, headers=admin_headers
    )
    assert {i["license_id"] for i in response.json()["items"]} == {second.license_id}
    response = client.get("/api/alerts", params={"type": "credits.warning"}, headers=admin_headers)
    assert [i["organization_id"] for i in response.json()["items"]] == [first.org_id]
    response = client.get("/api/alerts", params={"limit": 1, "offset": 1}, headers=admin_headers)
    assert response.json()["items"][0]["id"] == items[1]["id"]
    assert client.get("/api/alerts").status_code == 401
    assert client.get("/api/alerts", headers=first.headers).status_code == 403


def test_same_second_alerts_are_ordered_newest_first(client, database, admin_headers, make_tenant):
    tenant = make_tenant(license={"credits_total": Decimal(100), "token_budget_usd": None})
    ingest(client, tenant, event("0.9"))
    ingest(client, tenant, event("0.1"))
    with database.session(write=True) as session:
        session.execute(update(Alert).values(created_at=NOW))
    items = client.get("/api/alerts", headers=admin_headers).json()["items"]
    assert [i["type"] for i in items] == ["credits.exhausted", "credits.warning"]


def test_concurrent_batches_crossing_the_same_threshold_fire_once(settings, database, make_tenant):
    tenant = make_tenant(
        license={
            "credits_total": Decimal(100),  # 1 USD
            "token_budget_usd": Decimal(1),
            "budget_period": "license",  # open-ended: no forecast alert to race
        }
    )
    batches = 12
    barrier = threading.Barrier(batches)
    statuses: list[int] = []
    with serve(settings) as base_url:

        def post(n: int) -> None:
            with httpx.Client(base_url=base_url, timeout=60) as http:
                barrier.wait()
                response = http.post(
                    "/api/v1/usage",
                    json={"events": [event("0.05", id=f"b{n}-{i}") for i in range(2)]},
                    headers=tenant.headers,
                )
                statuses.append(response.status_code)

        threads = [threading.Thread(target=post, args=(n,)) for n in range(batches)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert statuses == [200] * batches
    counts = Counter(t for t, _p in _alerts(database, tenant.license_id))
    assert counts == {
        "credits.warning": 1,
        "credits.exhausted": 1,
        "budget.warning": 1,
        "budget.exhausted": 1,
    }


def _armed(database, license_id: int) -> list[tuple[str, str, bool]]:  # type: ignore[no-untyped-def]
    """(type, period, still armed) of the license's alerts, forecasts left out."""
    with database.session(write=False) as session:
        rows = session.execute(
            select(Alert.type, Alert.period, Alert.rearmed_at)
            .where(Alert.license_id == license_id, Alert.type != "budget.forecast")
            .order_by(Alert.id)
        ).all()
    return [(t, p, rearmed is None) for t, p, rearmed in rows]


def test_a_top_up_rearms_the_thresholds_it_moves_below(
    client, database, admin_headers, make_tenant
):
    # 100 credits at 0.01 USD: 0.95 USD is 95 credits, past the 80 % warning.
    tenant = make_tenant(license={"credits_total": Decimal(100), "token_budget_usd": None})
    ingest(client, tenant, event("0.95"))
    assert _armed(database, tenant.license_id) == [("credits.warning", "license", True)]
    # Top-up to 250 credits: 95 of 250 is 38 %, below the warning again.
    response = client.patch(
        f"/api/licenses/{tenant.license_id}", json={"credits_total": 250}, headers=admin_headers
    )
    assert response.status_code == 200, response.text
    assert _armed(database, tenant.license_id) == [("credits.warning", "license", False)]
    ingest(client, tenant, event("1.04"))  # 199 credits: 79.6 %
    assert len(_armed(database, tenant.license_id)) == 1
    ingest(client, tenant, event("0.01"))  # 200 credits: 80 %, crossed again
    assert _armed(database, tenant.license_id) == [
        ("credits.warning", "license", False),
        ("credits.warning", "license", True),
    ]
    ingest(client, tenant, event("0.2"))  # 220: still once per arming
    ingest(client, tenant, event("0.3"))  # 250: exhausted, once
    ingest(client, tenant, event("0.1"))
    assert _armed(database, tenant.license_id) == [
        ("credits.warning", "license", False),
        ("credits.warning", "license", True),
        ("credits.exhausted", "license", True),
    ]
    listed = client.get(
        "/api/alerts", params={"organization_id": tenant.org_id}, headers=admin_headers
    ).json()
    assert [(a["type"], a["rearmed_at"] is None) for a in listed["items"]] == [
        ("credits.exhausted", True),
        ("credits.warning", True),
        ("credits.warning", False),
    ]


def test_a_change_that_stays_above_a_threshold_keeps_it_fired(
    client, database, admin_headers, make_tenant
):
    tenant = make_tenant(license={"credits_total": Decimal(100), "token_budget_usd": None})
    ingest(client, tenant, event("0.95"))
    # 95 of 110 credits is 86 %: still past the warning, which stays fired.
    response = client.patch(
        f"/api/licenses/{tenant.license_id}", json={"credits_total": 110}, headers=admin_headers
    )
    assert response.status_code == 200, response.text
    ingest(client, tenant, event("0.05"))
    assert _armed(database, tenant.license_id) == [("credits.warning", "license", True)]


def test_budget_and_warning_percent_changes_rearm_through_the_budget_route(
    client, database, admin_headers, make_tenant
):
    tenant = make_tenant(license=usd_budget_license(NOW, days_before=30))  # 10 USD, license
    ingest(client, tenant, event("8.5"))  # 85 %
    assert _armed(database, tenant.license_id) == [("budget.warning", "license", True)]

    def put(**fields: object) -> None:
        response = client.put(
            f"/api/token-usage/budget/{tenant.license_id}", json=fields, headers=admin_headers
        )
        assert response.status_code == 200, response.text

    put(budget_warning_percent=90)  # 85 % is below the new warning: re-armed
    assert _armed(database, tenant.license_id) == [("budget.warning", "license", False)]
    ingest(client, tenant, event("0.5"))  # 90 %
    assert _armed(database, tenant.license_id)[-1] == ("budget.warning", "license", True)
    put(token_budget_usd="20")  # 9 of 20 USD: 45 %
    ingest(client, tenant, event("8.99"))  # 17.99: 89.95 %
    assert [armed for *_, armed in _armed(database, tenant.license_id)] == [False, False]
    ingest(client, tenant, event("0.01"))  # 18 of 20: 90 %
    assert _armed(database, tenant.license_id) == [
        ("budget.warning", "license", False),
        ("budget.warning", "license", False),
        ("budget.warning", "license", True),
    ]
    # Lowering the budget so that present spend exhausts it fires at once.
    put(token_budget_usd="18")
    assert _armed(database, tenant.license_id)[-1] == ("budget.exhausted", "license", True)


def test_the_database_keeps_one_armed_alert_per_key(database, make_tenant):
    import pytest
    from sqlalchemy.exc import IntegrityError

    tenant = make_tenant(license={"credits_total": Decimal(100), "token_budget_usd": None})

    def add(rearmed: bool) -> None:
        with database.session(write=True) as session:
            session.add(
                Alert(
                    organization_id=tenant.org_id,
                    license_id=tenant.license_id,
                    type="credits.warning",
                    period="license",
                    rearmed_at=NOW if rearmed else None,
                )
            )

    add(rearmed=True)
    add(rearmed=True)
    add(rearmed=False)
    with pytest.raises(IntegrityError):
        add(rearmed=False)
