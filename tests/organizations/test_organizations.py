"""Organizations: create, list and search, get, patch, archive, delete."""

from __future__ import annotations

from datetime import datetime

from fastapi.testclient import TestClient
from sqlalchemy import delete, select

from tests.conftest import NOW
from tests.factories import make_license, make_org
from tokenledger.auth.models import ApiKey
from tokenledger.auth.service import create_api_key
from tokenledger.organizations.models import Organization
from tokenledger.organizations.refs import by_slug_or_id
from tokenledger.organizations.service import slugify
from tokenledger.usage.models import UsageEvent, UsagePrice


def _usage_event(org_id: int) -> UsageEvent:
    return UsageEvent(
        organization_id=org_id,
        external_id="evt-1",
        content_hash=bytes(32),
        timestamp=NOW,
        received_at=NOW,
        year_month="2026-11",
        day="2026-11-18",
        price=UsagePrice(
            fingerprint="0" * 64,
            provider="anthropic",
            model="claude-sonnet-4-5",
            pricing="unpriced",
        ),
        input_tokens=10,
        output_tokens=5,
        cache_creation_input_tokens=0,
        cache_read_input_tokens=0,
        cache_write_1h_tokens=0,
        api_calls=1,
    )


def test_create_with_and_without_slug(client, admin_headers):
    response = client.post(
        "/api/organizations", json={"name": "Acme Corp", "slug": "acme"}, headers=admin_headers
    )
    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "Acme Corp"
    assert body["slug"] == "acme"
    assert body["archived_at"] is None
    assert datetime.fromisoformat(body["created_at"]).tzinfo is not None

    response = client.post(
        "/api/organizations", json={"name": "  Zürich Ärzte & Co.  "}, headers=admin_headers
    )
    assert response.status_code == 201
    assert response.json()["slug"] == "zurich-arzte-co"
    assert response.json()["name"] == "Zürich Ärzte & Co."


def test_slugify():
    assert slugify("Acme Corp") == "acme-corp"
    assert slugify("--Hello,  World!--") == "hello-world"
    assert slugify("Crème Brûlée 2") == "creme-brulee-2"
    assert slugify("x" * 100) == "x" * 64
    assert slugify("!!!") == "org"


def test_slug_must_be_unique(client, admin_headers):
    client.post("/api/organizations", json={"name": "Acme"}, headers=admin_headers)
    for payload in ({"name": "Other", "slug": "acme"}, {"name": "ACME"}):
        response = client.post("/api/organizations", json=payload, headers=admin_headers)
        assert response.status_code == 409, payload
        assert response.json()["error"]["code"] == "slug_taken"
    assert client.get("/api/organizations", headers=admin_headers).json()["total"] == 1


def test_create_validation(client, admin_headers):
    bad = [
        {},
        {"name": ""},
        {"name": "   "},
        {"name": "x" * 201},
        {"name": "Acme", "slug": "Acme"},
        {"name": "Acme", "slug": "ac me"},
        {"name": "Acme", "slug": "-acme"},
        {"name": "Acme", "slug": "acme-"},
        {"name": "Acme", "slug": "ac--me"},
        {"name": "Acme", "slug": "ac_me"},
        {"name": "Acme", "slug": "a" * 65},
        {"name": "Acme", "owner": "me"},
    ]
    for payload in bad:
        response = client.post("/api/organizations", json=payload, headers=admin_headers)
        assert response.status_code == 422, payload
        assert response.json()["error"]["code"] == "validation_error"
    assert client.get("/api/organizations", headers=admin_headers).json()["total"] == 0


def test_list_is_paginated_and_searchable(client, database, viewer_headers):
    with database.session(write=True) as session:
        for name, slug in [
            ("Gamma Labs", "gamma"),
            ("alpha industries", "alpha"),
            ("Beta", "beta-team"),
            ("Delta_Force", "delta"),
            ("Epsilon", "eps"),
        ]:
            make_org(session, name=name, slug=slug)

    page = client.get("/api/organizations", params={"limit": 2}, headers=viewer_headers).json()
    assert page["total"] == 5
    assert page["limit"] == 2
    assert page["offset"] == 0
    # By name, whatever its case, on both backends.
    assert [o["slug"] for o in page["items"]] == ["alpha", "beta-team"]
    page = client.get(
        "/api/organizations", params={"limit": 2, "offset": 4}, headers=viewer_headers
    ).json()
    assert [o["slug"] for o in page["items"]] == ["gamma"]

    def search(q: str) -> list[str]:
        response = client.get("/api/organizations", params={"q": q}, headers=viewer_headers)
        assert response.status_code == 200
        return sorted(o["slug"] for o in response.json()["items"])

    assert search("ALPHA") == ["alpha"]  # by name, any case
    assert search("team") == ["beta-team"]  # by slug
    assert search("labs") == ["gamma"]
    # LIKE wildcards in the query are plain characters.
    assert search("_") == ["delta"]
    assert search("%") == []
    assert search("nothing") == []

    for params in ({"limit": 0}, {"limit": 501}, {"offset": -1}, {"limit": "x"}):
        response = client.get("/api/organizations", params=params, headers=viewer_headers)
        assert response.status_code == 422, params


def test_get_and_404(client, database, viewer_headers):
    with database.session(write=True) as session:
        org = make_org(session, name="Acme", slug="acme")
    response = client.get(f"/api/organizations/{org.id}", headers=viewer_headers)
    assert response.status_code == 200
    assert response.json()["slug"] == "acme"
    response = client.get(f"/api/organizations/{org.id + 1}", headers=viewer_headers)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "organization_not_found"
    assert client.get("/api/organizations/abc", headers=viewer_headers).status_code == 422


def test_patch(client, database, admin_headers):
    with database.session(write=True) as session:
        org = make_org(session, name="Acme", slug="acme")
        make_org(session, name="Beta", slug="beta")
    url = f"/api/organizations/{org.id}"

    response = client.patch(
        url, json={"name": "Acme Inc", "slug": "acme-inc"}, headers=admin_headers
    )
    assert response.status_code == 200
    assert (response.json()["name"], response.json()["slug"]) == ("Acme Inc", "acme-inc")

    response = client.patch(url, json={"slug": "beta"}, headers=admin_headers)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "slug_taken"
    # Its own slug is not a conflict.
    assert client.patch(url, json={"slug": "acme-inc"}, headers=admin_headers).status_code == 200

    for payload in ({"slug": "Bad Slug"}, {"name": ""}, {"name": "  "}, {"id": 5}):
        assert client.patch(url, json=payload, headers=admin_headers).status_code == 422, payload

    assert client.get(url, headers=admin_headers).json()["name"] == "Acme Inc"
    missing = client.patch(
        f"/api/organizations/{org.id + 99}", json={"name": "X"}, headers=admin_headers
    )
    assert missing.status_code == 404


def test_archive_and_unarchive(client, database, admin_headers):
    with database.session(write=True) as session:
        org = make_org(session)
        suspended = make_license(session, org, status="suspended")
    url = f"/api/organizations/{org.id}"
    archived = client.patch(url, json={"archived": True}, headers=admin_headers).json()
    assert archived["archived_at"] is not None
    # Archiving again keeps the first date.
    again = client.patch(url, json={"archived": True}, headers=admin_headers).json()
    assert again["archived_at"] == archived["archived_at"]
    # An archived organization is still listed and readable, but takes no new license.
    assert client.get("/api/organizations", headers=admin_headers).json()["total"] == 1
    response = client.post(
        "/api/licenses",
        json={"organization_id": org.id, "credits_total": "10", "cost_per_credit": "0.01"},
        headers=admin_headers,
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "organization_archived"
    # Nor can one of its licenses be made active again.
    response = client.patch(
        f"/api/licenses/{suspended.id}", json={"status": "active"}, headers=admin_headers
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "organization_archived"

    restored = client.patch(url, json={"archived": False}, headers=admin_headers).json()
    assert restored["archived_at"] is None


def test_delete_an_organization_without_history(client, database, admin_headers):
    with database.session(write=True) as session:
        org = make_org(session)
    url = f"/api/organizations/{org.id}"
    response = client.delete(url, headers=admin_headers)
    assert response.status_code == 204
    assert client.get(url, headers=admin_headers).status_code == 404
    assert client.delete(url, headers=admin_headers).status_code == 404


def test_delete_is_refused_once_there_is_history(client, database, admin_headers):
    with database.session(write=True) as session:
        with_usage = make_org(session)
        session.add(_usage_event(with_usage.id))
        with_license = make_org(session)
        make_license(session, with_license)
        with_key = make_org(session)
        create_api_key(session, "k", with_key.slug, actor=None)

    for org in (with_usage, with_license, with_key):
        response = client.delete(f"/api/organizations/{org.id}", headers=admin_headers)
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "organization_has_history"
        assert '"archived": true' in response.json()["error"]["message"]

    # Archiving is the way out for an organization with usage.
    response = client.patch(
        f"/api/organizations/{with_usage.id}", json={"archived": True}, headers=admin_headers
    )
    assert response.status_code == 200
    with database.session(write=False) as session:
        assert len(session.scalars(select(Organization)).all()) == 3


def test_ids_no_row_can_have_are_refused_not_a_server_error(app, database, admin_headers):
    huge = [2**31, 10**20]
    with TestClient(app, raise_server_exceptions=False) as client:
        for org_id in [*huge, 0, -1]:
            for method, path, body in (
                ("GET", f"/api/organizations/{org_id}", None),
                ("PATCH", f"/api/organizations/{org_id}", {"name": "X"}),
                ("DELETE", f"/api/organizations/{org_id}", None),
                ("GET", f"/api/organizations/{org_id}/licenses", None),
                ("GET", f"/api/licenses/{org_id}", None),
                ("PATCH", f"/api/licenses/{org_id}", {"status": "active"}),
                (
                    "POST",
                    "/api/licenses",
                    {"organization_id": org_id, "credits_total": 1, "cost_per_credit": 1},
                ),
            ):
                response = client.request(method, path, json=body, headers=admin_headers)
                assert response.status_code == 422, (method, path, response.text)
        assert (
            client.get(f"/api/organizations/{2**31 - 1}", headers=admin_headers).status_code == 404
        )


def test_organization_by_slug_or_id(database):
    with database.session(write=True) as session:
        org = make_org(session, slug="acme")
        numeric = make_org(session, slug="2024")
    with database.session(write=False) as session:
        assert by_slug_or_id(session, "acme").id == org.id  # type: ignore[union-attr]
        assert by_slug_or_id(session, str(org.id)).id == org.id  # type: ignore[union-attr]
        # A slug made of digits wins over the id it spells.
        assert by_slug_or_id(session, "2024").id == numeric.id  # type: ignore[union-attr]
        for ref in ("nope", "99999999999", str(10**20), "0", "-1", "\u00b2", "\u0661"):
            assert by_slug_or_id(session, ref) is None, ref


def test_delete_of_an_organization_whose_only_history_is_a_hold_is_a_409(
    client, database, admin_headers
):
    """Reported from outside: a reservation's foreign key made the delete a 500."""
    with database.session(write=True) as session:
        org = make_org(session)
        _key, secret = create_api_key(session, "k", org.slug, actor=None)
    hold = client.post(
        "/api/v1/reservations",
        json={"max_cost_usd": "1.5"},
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert hold.status_code == 201, hold.text
    with database.session(write=True) as session:  # the key goes; the hold stays
        session.execute(delete(ApiKey).where(ApiKey.organization_id == org.id))
    response = client.delete(f"/api/organizations/{org.id}", headers=admin_headers)
    assert response.status_code == 409, response.text
    assert response.json()["error"]["code"] == "organization_has_history"
    assert client.get(f"/api/organizations/{org.id}", headers=admin_headers).status_code == 200
