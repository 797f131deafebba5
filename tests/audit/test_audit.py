"""The audit log: every admin write, with before and after, in the same transaction."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from tests.factories import make_org
from tokenledger.audit.models import AuditEntry
from tokenledger.db import Database
from tokenledger.organizations.models import Organization


def _entries(client: TestClient, headers: dict[str, str], **params: object) -> dict:  # type: ignore[type-arg]
    response = client.get("/api/audit-log", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def test_organization_and_license_writes_are_audited(client, admin_headers, viewer_headers):
    org = client.post(
        "/api/organizations", json={"name": "Acme", "slug": "acme"}, headers=admin_headers
    ).json()
    client.patch(
        f"/api/organizations/{org['id']}", json={"name": "Acme Inc"}, headers=admin_headers
    )
    lic = client.post(
        "/api/licenses",
        json={"organization_id": org["id"], "credits_total": "100", "cost_per_credit": "0.5"},
        headers=admin_headers,
    ).json()
    client.patch(
        f"/api/licenses/{lic['id']}", json={"budget_warning_percent": 95}, headers=admin_headers
    )
    spare = client.post("/api/organizations", json={"name": "Spare"}, headers=admin_headers).json()
    assert (
        client.delete(f"/api/organizations/{spare['id']}", headers=admin_headers).status_code == 204
    )

    page = _entries(client, viewer_headers)
    assert page["total"] == 6
    newest_first = [(e["action"], e["entity_type"], e["entity_id"]) for e in page["items"]]
    assert newest_first == [
        ("organization.delete", "organization", str(spare["id"])),
        ("organization.create", "organization", str(spare["id"])),
        ("license.update", "license", str(lic["id"])),
        ("license.create", "license", str(lic["id"])),
        ("organization.update", "organization", str(org["id"])),
        ("organization.create", "organization", str(org["id"])),
    ]
    for entry in page["items"]:
        assert entry["actor"] == "admin@example.com"
        assert entry["client_address"] == "testclient"
        assert entry["created_at"]

    by_action = {(e["action"], e["entity_id"]): e for e in page["items"]}
    created = by_action[("organization.create", str(org["id"]))]
    assert created["before"] is None
    assert created["after"]["slug"] == "acme"
    updated = by_action[("organization.update", str(org["id"]))]
    assert (updated["before"]["name"], updated["after"]["name"]) == ("Acme", "Acme Inc")
    lic_update = by_action[("license.update", str(lic["id"]))]
    assert lic_update["before"]["budget_warning_percent"] == 80
    assert lic_update["after"]["budget_warning_percent"] == 95
    assert lic_update["after"]["credits_total"] == lic_update["before"]["credits_total"]
    deleted = by_action[("organization.delete", str(spare["id"]))]
    assert deleted["before"]["name"] == "Spare"
    assert deleted["after"] is None


def test_filters_and_pagination(client, database, admin_headers):
    with database.session(write=True) as session:
        first, second = make_org(session), make_org(session)
    response = client.post(
        "/api/licenses",
        json={"organization_id": second.id, "credits_total": "1", "cost_per_credit": "1"},
        headers=admin_headers,
    )
    assert response.status_code == 201
    for org, archived in ((first, True), (second, True), (first, False)):
        response = client.patch(
            f"/api/organizations/{org.id}", json={"archived": archived}, headers=admin_headers
        )
        assert response.status_code == 200
    assert _entries(client, admin_headers)["total"] == 4
    assert _entries(client, admin_headers, entity_type="organization")["total"] == 3
    assert _entries(client, admin_headers, entity_type="license")["total"] == 1
    only_first = _entries(client, admin_headers, entity_type="organization", entity_id=first.id)
    assert only_first["total"] == 2
    assert {e["entity_id"] for e in only_first["items"]} == {str(first.id)}
    assert _entries(client, admin_headers, entity_type="nothing")["total"] == 0

    page = _entries(client, admin_headers, limit=3, offset=1)
    assert (page["total"], page["limit"], page["offset"], len(page["items"])) == (4, 3, 1, 3)
    everything = _entries(client, admin_headers)["items"]
    assert page["items"] == everything[1:4]
    assert (
        client.get("/api/audit-log", params={"limit": 0}, headers=admin_headers).status_code == 422
    )


def test_refused_writes_leave_no_entry(client, database, admin_headers, viewer_headers):
    with database.session(write=True) as session:
        make_org(session, slug="taken")
    responses = [
        client.post(
            "/api/organizations", json={"name": "X", "slug": "taken"}, headers=admin_headers
        ),
        client.post("/api/organizations", json={"name": ""}, headers=admin_headers),
        client.post("/api/organizations", json={"name": "Y"}, headers=viewer_headers),
        client.patch("/api/organizations/999", json={"name": "Z"}, headers=admin_headers),
    ]
    assert [r.status_code for r in responses] == [409, 422, 403, 404]
    assert _entries(client, admin_headers)["total"] == 0


@pytest.fixture
def audit_log_refuses_inserts(database: Database) -> Iterator[None]:
    """A database trigger that fails every insert into the audit log."""
    if database.dialect_name == "sqlite":
        create = [
            "CREATE TRIGGER audit_down BEFORE INSERT ON audit_log "
            "BEGIN SELECT RAISE(ABORT, 'audit log down'); END"
        ]
        drop = ["DROP TRIGGER IF EXISTS audit_down"]
    else:
        create = [
            "CREATE FUNCTION audit_down() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'audit log down'; END $$",
            "CREATE TRIGGER audit_down BEFORE INSERT ON audit_log "
            "FOR EACH ROW EXECUTE FUNCTION audit_down()",
        ]
        drop = [
            "DROP TRIGGER IF EXISTS audit_down ON audit_log",
            "DROP FUNCTION IF EXISTS audit_down()",
        ]
    with database.engine.begin() as connection:
        for statement in create:
            connection.execute(text(statement))
    try:
        yield
    finally:
        with database.engine.begin() as connection:
            for statement in drop:
                connection.execute(text(statement))


def test_change_and_audit_entry_commit_together(
    app, database, admin_headers, audit_log_refuses_inserts
):
    with database.session(write=True) as session:
        org = make_org(session, name="Acme")
    with TestClient(app, raise_server_exceptions=False) as client:
        created = client.post("/api/organizations", json={"name": "New"}, headers=admin_headers)
        renamed = client.patch(
            f"/api/organizations/{org.id}", json={"name": "Renamed"}, headers=admin_headers
        )
        metrics = client.get("/metrics").text
    for response in (created, renamed):
        assert response.status_code == 500
        assert response.json() == {
            "error": {"code": "internal_error", "message": "internal server error"}
        }
    # Without its audit entry the change is not made either.
    with database.session(write=False) as session:
        assert session.scalars(select(Organization.name)).all() == ["Acme"]
        assert session.scalar(select(func.count()).select_from(AuditEntry)) == 0
    assert "tokenledger_database_errors_total 2.0" in metrics


def test_a_change_that_changes_nothing_leaves_no_entry(client, admin_headers):
    org = client.post("/api/organizations", json={"name": "Acme"}, headers=admin_headers).json()
    url = f"/api/organizations/{org['id']}"
    assert client.patch(url, json={"name": "Acme"}, headers=admin_headers).status_code == 200
    assert client.patch(url, json={"name": "Acme Ltd"}, headers=admin_headers).status_code == 200
    entries = client.get(
        "/api/audit-log", params={"entity_type": "organization"}, headers=admin_headers
    ).json()["items"]
    assert [entry["action"] for entry in entries] == ["organization.update", "organization.create"]
    assert entries[0]["after"]["name"] == "Acme Ltd"
