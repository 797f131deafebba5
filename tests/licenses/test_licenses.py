"""Licenses: budget fields at creation, validation, one active license per organization."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from tests.conftest import NOW
from tests.factories import make_license, make_org
from tokenledger.errors import DomainError
from tokenledger.licenses import service as licenses
from tokenledger.licenses.models import License
from tokenledger.licenses.schemas import LicenseCreate


def _payload(org_id: int, **overrides: object) -> dict[str, object]:
    payload: dict[str, object] = {
        "organization_id": org_id,
        "credits_total": "5000",
        "cost_per_credit": "0.02",
        "token_budget_usd": "250.50",
    }
    payload.update(overrides)
    return payload


def _raw_license(org_id: int, **overrides: object) -> License:
    values: dict[str, object] = {
        "organization_id": org_id,
        "status": "active",
        "valid_from": NOW,
        "credits_total_micro": 1_000_000,
        "cost_per_credit_nano": 10_000_000,
        "budget_period": "monthly",
        "budget_warning_percent": 80,
        "enforcement": "soft",
        "credits_used_micro": 0,
    }
    values.update(overrides)
    return License(**values)


def test_create_with_every_budget_field(client, database, admin_headers):
    with database.session(write=True) as session:
        org = make_org(session)
    valid_from = datetime(2026, 1, 1, tzinfo=UTC)
    payload = _payload(
        org.id,
        credits_total="1234.5",
        cost_per_credit="0.015",
        token_budget_usd="99.99",
        budget_period="license",
        budget_warning_percent=90,
        enforcement="hard",
        valid_from="2026-01-01T01:00:00+01:00",
        valid_until="2027-01-01T00:00:00Z",
        status="suspended",
    )
    response = client.post("/api/licenses", json=payload, headers=admin_headers)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["organization_id"] == org.id
    assert Decimal(body["credits_total"]) == Decimal("1234.5")
    assert Decimal(body["cost_per_credit"]) == Decimal("0.015")
    assert Decimal(body["token_budget_usd"]) == Decimal("99.99")
    assert Decimal(body["credits_used"]) == 0
    assert Decimal(body["credits_remaining"]) == Decimal("1234.5")
    assert body["budget_period"] == "license"
    assert body["budget_warning_percent"] == 90
    assert body["enforcement"] == "hard"
    assert body["status"] == "suspended"
    assert datetime.fromisoformat(body["valid_from"]) == valid_from
    assert datetime.fromisoformat(body["valid_until"]) == datetime(2027, 1, 1, tzinfo=UTC)
    # Money goes out as exact decimal text, never as a binary float.
    assert isinstance(body["cost_per_credit"], str)

    fetched = client.get(f"/api/licenses/{body['id']}", headers=admin_headers).json()
    assert fetched == body


def test_create_defaults(fixed_client, database, admin_headers):
    client = fixed_client
    with database.session(write=True) as session:
        org = make_org(session)
    response = client.post(
        "/api/licenses",
        json={"organization_id": org.id, "credits_total": 10, "cost_per_credit": 0.01},
        headers=admin_headers,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "active"
    assert body["budget_period"] == "monthly"
    assert body["budget_warning_percent"] == 80
    assert body["enforcement"] == "soft"
    assert body["valid_until"] is None
    assert body["token_budget_usd"] is None
    assert Decimal(body["cost_per_credit"]) == Decimal("0.01")
    assert datetime.fromisoformat(body["valid_from"]) == NOW  # the app's now


def test_create_validation(fixed_client, database, admin_headers):
    client = fixed_client
    with database.session(write=True) as session:
        org = make_org(session)
    cases = [
        {"credits_total": "-1"},
        {"credits_total": "1.0000001"},
        {"credits_total": "NaN"},
        {"credits_total": "abc"},
        {"cost_per_credit": "0"},
        {"cost_per_credit": "-0.01"},
        {"token_budget_usd": "-0.01"},
        {"token_budget_usd": "Infinity"},
        {"budget_warning_percent": 0},
        {"budget_warning_percent": 101},
        {"budget_warning_percent": 50.5},
        {"budget_period": "weekly"},
        {"enforcement": "strict"},
        {"status": "deleted"},
        {"valid_from": "2026-02-01T00:00:00Z", "valid_until": "2026-02-01T00:00:00Z"},
        {"valid_from": "2026-02-01T00:00:00Z", "valid_until": "2026-01-01T00:00:00Z"},
        {"valid_from": "2026-02-01T00:00:00"},  # no offset: ambiguous
        {"credits_used": "5"},
        {"unknown_field": 1},
    ]
    for overrides in cases:
        response = client.post(
            "/api/licenses", json=_payload(org.id, **overrides), headers=admin_headers
        )
        assert response.status_code == 422, overrides
        assert response.json()["error"]["code"] == "validation_error", overrides
    for missing in ("organization_id", "credits_total", "cost_per_credit"):
        payload = _payload(org.id)
        del payload[missing]
        response = client.post("/api/licenses", json=payload, headers=admin_headers)
        assert response.status_code == 422, missing

    # valid_from defaults to the app's now, so a valid_until before it, or at it, is refused.
    for until in (NOW - timedelta(days=1), NOW):
        response = client.post(
            "/api/licenses",
            json=_payload(org.id, valid_until=until.isoformat()),
            headers=admin_headers,
        )
        assert response.status_code == 422, until
        assert response.json()["error"]["code"] == "invalid_validity"

    # Bounds that are allowed.
    response = client.post(
        "/api/licenses",
        json=_payload(org.id, credits_total="0", token_budget_usd="0", budget_warning_percent=1),
        headers=admin_headers,
    )
    assert response.status_code == 201, response.text
    listed = client.get(f"/api/organizations/{org.id}/licenses", headers=admin_headers).json()
    assert [lic["budget_warning_percent"] for lic in listed] == [1]
    assert Decimal(listed[0]["credits_total"]) == 0


def test_create_for_unknown_organization(client, admin_headers):
    response = client.post("/api/licenses", json=_payload(999), headers=admin_headers)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "organization_not_found"


def test_one_active_license_per_organization(client, database, admin_headers):
    with database.session(write=True) as session:
        org = make_org(session)
        other = make_org(session)
    first = client.post("/api/licenses", json=_payload(org.id), headers=admin_headers)
    assert first.status_code == 201
    second = client.post("/api/licenses", json=_payload(org.id), headers=admin_headers)
    assert second.status_code == 409
    assert second.json()["error"]["code"] == "active_license_exists"
    # Other statuses, and other organizations, are not limited.
    for status in ("suspended", "expired", "cancelled", "suspended"):
        response = client.post(
            "/api/licenses", json=_payload(org.id, status=status), headers=admin_headers
        )
        assert response.status_code == 201, status
    assert (
        client.post("/api/licenses", json=_payload(other.id), headers=admin_headers).status_code
        == 201
    )

    listed = client.get(f"/api/organizations/{org.id}/licenses", headers=admin_headers).json()
    assert [lic["status"] for lic in listed] == [
        "suspended",
        "cancelled",
        "expired",
        "suspended",
        "active",
    ]

    # Re-activating a suspended license while another is active: 409, nothing changed.
    suspended_id = listed[0]["id"]
    url = f"/api/licenses/{suspended_id}"
    response = client.patch(url, json={"status": "active"}, headers=admin_headers)
    assert response.status_code == 409
    assert client.get(url, headers=admin_headers).json()["status"] == "suspended"
    # Once the active one is cancelled, it can be.
    response = client.patch(
        f"/api/licenses/{first.json()['id']}", json={"status": "cancelled"}, headers=admin_headers
    )
    assert response.status_code == 200
    response = client.patch(url, json={"status": "active"}, headers=admin_headers)
    assert response.status_code == 200
    assert response.json()["status"] == "active"


def test_database_itself_allows_one_active_license(database):
    with database.session(write=True) as session:
        org = make_org(session)
        org_id = org.id
        session.add(_raw_license(org_id))
        session.add(_raw_license(org_id, status="suspended"))
        session.add(_raw_license(org_id, status="suspended"))
    with database.session(write=True) as session:
        session.add(_raw_license(org_id))
        with pytest.raises(IntegrityError):
            session.flush()
        session.rollback()
    with database.session(write=True) as session:
        # An active license may become suspended and another active: it is "active" that is
        # unique, not the organization.
        active = session.scalar(select(License).where(License.status == "active"))
        assert active is not None
        active.status = "expired"
        session.flush()
        session.add(_raw_license(org_id))
    with database.session(write=False) as session:
        statuses = sorted(session.scalars(select(License.status)).all())
    assert statuses == ["active", "expired", "suspended", "suspended"]


def test_database_checks_license_values(database):
    with database.session(write=True) as session:
        org_id = make_org(session).id
    now = NOW
    for overrides in (
        {"status": "deleted"},
        {"credits_total_micro": -1},
        {"cost_per_credit_nano": 0},
        {"token_budget_nano": -1},
        {"budget_warning_percent": 0},
        {"budget_warning_percent": 101},
        {"budget_period": "weekly"},
        {"enforcement": "strict"},
        {"valid_from": now, "valid_until": now},
    ):
        with database.session(write=True) as session:
            session.add(_raw_license(org_id, **overrides))
            with pytest.raises(IntegrityError):
                session.flush()
            session.rollback()


def test_lost_race_for_the_active_license_is_a_conflict(database):
    """Two admins activate licenses at once: the database decides, and the loser gets 409."""
    with database.session(write=True) as session:
        org = make_org(session)
    data = LicenseCreate(
        organization_id=org.id, credits_total=Decimal(1), cost_per_credit=Decimal(1)
    )
    with database.session(write=True) as session:
        # The other transaction's row, not yet visible to this one's check.
        session.add(_raw_license(org.id))
        with session.no_autoflush, pytest.raises(DomainError) as caught:
            licenses.create(session, data, NOW, actor=None)
        session.rollback()
    assert (caught.value.status, caught.value.code) == (409, "active_license_exists")


def test_two_sessions_racing_for_the_active_license_one_gets_a_conflict(database):
    """Two real transactions on two connections: the first inserts an active license and
    holds its transaction open; the second passes the service's own check (the first row
    is not visible yet), then waits on the partial unique index, and is refused with 409
    once the first commits. PostgreSQL only: SQLite's single writer never lets two write
    transactions overlap (the sequential case is the test above)."""
    if database.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer: two write transactions never overlap")
    with database.session(write=True) as session:
        org = make_org(session)
    data = LicenseCreate(
        organization_id=org.id, credits_total=Decimal(1), cost_per_credit=Decimal(1)
    )
    outcome: list[object] = []

    def second() -> None:
        try:
            with database.session(write=True) as session:
                licenses.create(session, data, NOW, actor=None)
            outcome.append("created")
        except DomainError as exc:
            outcome.append((exc.status, exc.code))
        except Exception as exc:  # reported by the assertion below, not lost in the thread
            outcome.append(exc)

    with database.session(write=True) as first:
        first.add(_raw_license(org.id))
        first.flush()  # the row exists in this open transaction, on this connection
        thread = threading.Thread(target=second)
        thread.start()
        waiting = 0
        deadline = time.monotonic() + 30
        while not waiting and time.monotonic() < deadline and thread.is_alive():
            # A new transaction each time: pg_stat_activity is read once per transaction.
            with database.engine.connect() as observer:
                waiting = observer.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND wait_event_type = 'Lock' "
                        "AND query ILIKE 'INSERT INTO licenses%'"
                    )
                ).scalar_one()
            if not waiting:
                time.sleep(0.02)
        # The second transaction is blocked by the first's uncommitted row, not yet answered.
        assert waiting == 1
        assert thread.is_alive()
        assert outcome == []
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert outcome == [(409, "active_license_exists")]
    with database.session(write=False) as session:
        rows = session.scalars(select(License).where(License.organization_id == org.id)).all()
    assert [row.status for row in rows] == ["active"]


def test_get_and_list_404(client, database, viewer_headers):
    with database.session(write=True) as session:
        org = make_org(session)
        lic = make_license(session, org)
    assert client.get(f"/api/licenses/{lic.id}", headers=viewer_headers).status_code == 200
    response = client.get(f"/api/licenses/{lic.id + 1}", headers=viewer_headers)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "license_not_found"
    response = client.get(f"/api/organizations/{org.id + 1}/licenses", headers=viewer_headers)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "organization_not_found"
    # An organization without licenses has an empty list, not a 404.
    with database.session(write=True) as session:
        empty = make_org(session)
    response = client.get(f"/api/organizations/{empty.id}/licenses", headers=viewer_headers)
    assert response.status_code == 200
    assert response.json() == []


def test_patch(client, database, admin_headers):
    with database.session(write=True) as session:
        lic = make_license(
            session,
            make_org(session),
            valid_from=datetime(2026, 1, 1, tzinfo=UTC),
            valid_until=datetime(2026, 12, 31, tzinfo=UTC),
        )
    url = f"/api/licenses/{lic.id}"
    response = client.patch(
        url,
        json={
            "credits_total": "2000",
            "cost_per_credit": "0.05",
            "token_budget_usd": "10",
            "budget_period": "license",
            "budget_warning_percent": 50,
            "enforcement": "hard",
        },
        headers=admin_headers,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert Decimal(body["credits_total"]) == 2000
    assert Decimal(body["cost_per_credit"]) == Decimal("0.05")
    assert Decimal(body["token_budget_usd"]) == 10
    assert (body["budget_period"], body["budget_warning_percent"], body["enforcement"]) == (
        "license",
        50,
        "hard",
    )

    # Fields that are not given stay; null clears the budget and the end date.
    response = client.patch(
        url, json={"token_budget_usd": None, "valid_until": None}, headers=admin_headers
    )
    assert response.status_code == 200
    assert response.json()["token_budget_usd"] is None
    assert response.json()["valid_until"] is None
    assert Decimal(response.json()["credits_total"]) == 2000

    for payload in (
        {"valid_until": "2025-06-01T00:00:00Z"},
        {"budget_warning_percent": 0},
        {"cost_per_credit": "0"},
        {"credits_used": "1"},
        {"organization_id": 5},
    ):
        response = client.patch(url, json=payload, headers=admin_headers)
        assert response.status_code == 422, payload
    assert client.get(url, headers=admin_headers).json()["budget_warning_percent"] == 50
    response = client.patch(
        f"/api/licenses/{lic.id + 1}", json={"status": "active"}, headers=admin_headers
    )
    assert response.status_code == 404
