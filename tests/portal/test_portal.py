"""Portal links and the portal page over HTTP: what a link opens, and what it never shows."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import NOW, make_settings
from tests.portal.conftest import B_SLUG, assert_nothing_of_b
from tests.web.conftest import read, sign_in
from tokenledger.app import create_app


def _link(client: Any, org_id: int, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = client.post(f"/api/organizations/{org_id}/portal-links", json=body, headers=headers)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def _path(url: str) -> str:
    return "/portal/" + url.split("/portal/", 1)[1]


def _refused(response: Any, *names: str) -> None:
    assert response.status_code == 401, response.text[:300]
    assert "Link not valid" in response.text
    for name in names:
        assert name not in response.text
    assert_nothing_of_b(response.text)


def test_a_link_opens_the_organizations_portal_for_24_hours(client, pair, admin_headers, clock):
    link = _link(client, pair.a.org_id, admin_headers)
    assert link["url"].startswith("http://testserver/portal/")
    assert link["expires_at"] == (NOW + timedelta(hours=24)).isoformat().replace("+00:00", "Z")
    path = _path(link["url"])
    response = client.get(path)
    assert response.status_code == 200
    assert "set-cookie" not in response.headers
    page = read(response.text)
    assert "Alpha Tenant GmbH" in page.text
    # The monthly table: Berlin months, worked by hand (conftest.py).
    monthly = page.tables["monthly"]
    assert [(row["data-month"], row["data-cost"]) for row in monthly.rows] == [
        ("2026-11", "3.65"),
        ("2026-10", "1.25"),
    ]
    assert [row["data-model"] for row in page.tables["models"].rows] == [
        "claude-haiku-4-5",
        "claude-sonnet-4-5",
    ]
    daily = {row["data-day"]: row["data-cost"] for row in page.tables["daily"].rows}
    assert len(daily) == 30
    assert (daily["2026-11-01"], daily["2026-11-15"], daily["2026-11-18"]) == (
        "2.50",
        "0.75",
        "0.40",
    )
    assert "Europe/Berlin" in page.text
    assert "USD budget at this pace" in page.text
    # Nothing of the admin UI, no link out of the portal.
    for link_target in page.links:
        assert link_target.startswith(path), link_target
    assert "Sign out" not in page.text
    assert "admin@example.com" not in response.text
    assert "/admin" not in response.text
    assert_nothing_of_b(response.text)
    # A day before it expires it works; at the hour it expires it does not.
    clock.now = NOW + timedelta(hours=23, minutes=59)
    assert client.get(path).status_code == 200
    clock.now = NOW + timedelta(hours=24)
    _refused(client.get(path), "Alpha Tenant GmbH", "alpha")


def test_the_portals_figures_are_the_admin_routes(client, pair, admin_headers):
    path = _path(_link(client, pair.a.org_id, admin_headers)["url"])
    for month in ("2026-10", "2026-11"):
        page = read(client.get(f"{path}?month={month}").text)
        admin = client.get(f"/api/token-usage/{pair.a.org_id}", headers=admin_headers).json()
        assert [row["data-cost"] for row in page.tables["monthly"].rows] == [
            row["cost_usd"] for row in admin
        ]
        models = client.get(
            f"/api/token-usage/{pair.a.org_id}/models?month={month}", headers=admin_headers
        ).json()["models"]
        assert [row["data-cost"] for row in page.tables["models"].rows] == [
            m["cost_usd"] for m in models
        ]


def test_the_csv_of_a_month_through_the_link(client, pair, admin_headers):
    path = _path(_link(client, pair.a.org_id, admin_headers)["url"])
    response = client.get(f"{path}/events.csv?month=2026-11")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [(row["id"], row["cost_usd"]) for row in rows] == [
        ("a-nov-01", "2.50"),
        ("a-nov-15", "0.75"),
        ("a-nov-18", "0.40"),
    ]
    assert client.get(f"{path}/events.csv?month=0000-01").status_code == 422


def _tampered(token: str) -> list[str]:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged_claims = base64.urlsafe_b64encode(json.dumps({**claims, "sub": "2"}).encode())
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    none_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').decode().rstrip("=")
    return [
        f"{header}.{forged_claims.decode().rstrip('=')}.{signature}",  # another organization
        f"{header}.{payload}.{flipped}",
        f"{none_header}.{payload}.",
        f"{header}.{payload}",
        token + "x",
        token[:-1],
        "x" * 5000,
        "%00",
        "' OR 1=1 --",
    ]


def test_tampered_tokens_get_a_401_page_that_names_no_organization(client, pair, admin_headers):
    token = _path(_link(client, pair.a.org_id, admin_headers)["url"]).split("/")[-1]
    for bad in _tampered(token):
        for suffix in ("", "/events.csv?month=2026-11"):
            _refused(client.get(f"/portal/{bad}{suffix}"), "Alpha Tenant GmbH", "alpha")
    # An admin's bearer token is not a portal token.
    admin_token = admin_headers["Authorization"].split()[1]
    _refused(client.get(f"/portal/{admin_token}"), "Alpha Tenant GmbH")


def test_revoking_refuses_every_link_of_the_organization_at_once(
    client, pair, admin_headers, settings, clock
):
    first = _path(_link(client, pair.a.org_id, admin_headers)["url"])
    second = _path(_link(client, pair.a.org_id, admin_headers, expires_in_hours=48)["url"])
    b_link = _path(_link(client, pair.b.org_id, admin_headers)["url"])
    # Another worker: its own app and connections on the same database.
    with TestClient(create_app(settings, clock=clock)) as other_worker:
        assert other_worker.get(first).status_code == 200
        response = client.delete(
            f"/api/organizations/{pair.a.org_id}/portal-links", headers=admin_headers
        )
        assert response.status_code == 204
        for worker in (client, other_worker):
            _refused(worker.get(first), "Alpha Tenant GmbH")
            _refused(worker.get(second), "Alpha Tenant GmbH")
        # B's links stand; a new link of A works again.
        assert other_worker.get(b_link).status_code == 200
        fresh = _path(_link(client, pair.a.org_id, admin_headers)["url"])
        assert other_worker.get(fresh).status_code == 200
    entries = client.get(
        f"/api/audit-log?entity_type=organization&entity_id={pair.a.org_id}", headers=admin_headers
    ).json()["items"]
    actions = [entry["action"] for entry in entries]
    assert actions.count("portal_link.create") == 3
    assert actions.count("portal_link.revoke_all") == 1
    assert all(entry["actor"] == "admin@example.com" for entry in entries)
    # The audit log never holds a usable token.
    assert first.split("/")[-1] not in json.dumps(entries)


def test_a_link_lifetime_is_bounded_and_links_need_an_admin(
    client, pair, admin_headers, viewer_headers
):
    org = pair.a.org_id
    for body in (
        {"expires_in_hours": 0},
        {"expires_in_hours": 721},
        {"hours": 1},
        {"expires_in_hours": "x"},
    ):
        response = client.post(
            f"/api/organizations/{org}/portal-links", json=body, headers=admin_headers
        )
        assert response.status_code == 422, (body, response.text)
    assert _link(client, org, admin_headers, expires_in_hours=720)["expires_at"].startswith(
        "2026-12-18"
    )
    assert (
        client.post(f"/api/organizations/{org}/portal-links", headers=viewer_headers).status_code
        == 403
    )
    assert (
        client.delete(f"/api/organizations/{org}/portal-links", headers=viewer_headers).status_code
        == 403
    )
    assert client.post(f"/api/organizations/{org}/portal-links").status_code == 401
    assert (
        client.post(f"/api/organizations/{org}/portal-links", headers=pair.a.headers).status_code
        == 403
    )
    assert (
        client.post("/api/organizations/999999/portal-links", headers=admin_headers).status_code
        == 404
    )
    entries = client.get("/api/audit-log", headers=admin_headers).json()["items"]
    assert [e["action"] for e in entries].count("portal_link.create") == 1


def test_german_from_accept_language_and_no_cookie_needed(client, pair, admin_headers):
    path = _path(_link(client, pair.a.org_id, admin_headers)["url"])
    client.cookies.clear()
    response = client.get(path, headers={"Accept-Language": "de-DE,de;q=0.9,en;q=0.5"})
    assert response.status_code == 200
    assert '<html lang="de" data-theme="auto">' in response.text
    assert "Nutzung pro Monat" in response.text
    assert "3,65\xa0$" in response.text  # German money, by Babel
    english = client.get(path, headers={"Accept-Language": "fr, en;q=0.5"})
    assert '<html lang="en"' in english.text


def test_the_portal_may_be_framed_only_by_the_listed_origins(
    database_url, pair, admin_headers, clock
):
    settings = make_settings(database_url, billing_timezone="Europe/Berlin")
    with TestClient(create_app(settings, clock=clock)) as client:
        path = _path(_link(client, pair.a.org_id, admin_headers)["url"])
        headers = client.get(path).headers
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer"
    allowed = "https://app.example.com https://*.tenant.example:8443"
    settings = make_settings(
        database_url, billing_timezone="Europe/Berlin", portal_frame_ancestors=allowed
    )
    with TestClient(create_app(settings, clock=clock)) as client:
        headers = client.get(path).headers
        policy = headers["content-security-policy"]
        assert "frame-ancestors https://app.example.com https://*.tenant.example:8443" in policy
        # The rest stays strict.
        for directive in (
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
        ):
            assert directive in policy
        assert "unsafe" not in policy
        assert "x-frame-options" not in headers
        # A refused link is framed the same way (it says so inside the frame).
        assert (
            "frame-ancestors https://app.example.com"
            in client.get("/portal/x").headers["content-security-policy"]
        )
        # Admin pages still may not be framed.
        login = client.get("/login").headers
        assert "frame-ancestors 'none'" in login["content-security-policy"]
        assert login["x-frame-options"] == "DENY"


@pytest.mark.parametrize(
    "origins",
    ["https://a.example; script-src *", "'self'", "javascript:x", "https://a.example/path", "*"],
)
def test_frame_ancestors_take_origins_only(database_url, origins):
    with pytest.raises(ValueError, match="origin"):
        make_settings(database_url, portal_frame_ancestors=origins)


def test_without_usd_the_portal_shows_credits_only(database_url, pair, admin_headers, clock):
    settings = make_settings(database_url, billing_timezone="Europe/Berlin", tenant_show_usd=False)
    with TestClient(create_app(settings, clock=clock)) as client:
        path = _path(_link(client, pair.a.org_id, admin_headers)["url"])
        html = client.get(path).text
        page = read(html)
        assert "Credits" in page.text
        assert "USD budget" not in page.text
        assert "$" not in page.text
        assert "data-cost" not in html
        header = client.get(f"{path}/events.csv?month=2026-11").text.splitlines()[0]
        assert "cost_usd" not in header.split(",")


def test_an_admin_creates_and_revokes_links_on_the_organization_page(web, database, pair):
    browser = sign_in(web, database, "ui-admin@example.com", "admin")
    overview = browser.get(f"/organizations/{pair.a.org_id}").text
    assert f'action="/organizations/{pair.a.org_id}/portal-links"' in overview
    created = browser.post(f"/organizations/{pair.a.org_id}/portal-links", {"hours": "2"})
    assert created.status_code == 201
    url = re.search(r'id="portal-url">([^<]+)<', created.text)
    assert url is not None
    path = _path(url.group(1))
    assert web.get(path).status_code == 200
    assert (
        browser.post(f"/organizations/{pair.a.org_id}/portal-links", {"hours": "9999"}).status_code
        == 422
    )
    revoked = browser.post(f"/organizations/{pair.a.org_id}/portal-links/revoke")
    assert revoked.status_code == 303
    web.cookies.clear()
    _refused(web.get(path), "Alpha Tenant GmbH")


def test_a_viewer_sees_no_portal_control_and_cannot_create_one(web, database, pair):
    browser = sign_in(web, database, "ui-viewer@example.com", "viewer")
    overview = browser.get(f"/organizations/{pair.a.org_id}").text
    assert "portal-links" not in overview
    assert (
        browser.post(f"/organizations/{pair.a.org_id}/portal-links", {"hours": "2"}).status_code
        == 403
    )
    assert B_SLUG  # (B's data is checked by the other tests)


def test_an_organization_with_revoked_links_only_can_still_be_deleted(client, admin_headers):
    created = client.post("/api/organizations", json={"name": "Short-lived"}, headers=admin_headers)
    org_id = created.json()["id"]
    _link(client, org_id, admin_headers)
    assert (
        client.delete(
            f"/api/organizations/{org_id}/portal-links", headers=admin_headers
        ).status_code
        == 204
    )
    assert client.delete(f"/api/organizations/{org_id}", headers=admin_headers).status_code == 204
    assert client.get(f"/api/organizations/{org_id}", headers=admin_headers).status_code == 404


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    token=st.text(min_size=1, max_size=300).filter(lambda t: "/" not in t and t not in (".", ".."))
)
def test_any_other_token_is_refused_naming_no_one(client, pair, token):
    response = client.get(f"/portal/{quote(token, safe='')}")
    _refused(response, "Alpha Tenant GmbH", "alpha")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ref=st.text(min_size=1, max_size=80), month=st.text(max_size=12))
def test_any_organization_or_month_a_key_names_shows_nothing_of_another(client, pair, ref, month):
    for route in ("summary", "monthly", "models", "daily"):
        response = client.get(
            f"/api/v1/usage/{route}",
            params={"organization": ref, "month": month},
            headers=pair.a.headers,
        )
        assert response.status_code in (200, 403, 422), response.text
        if response.status_code == 200:
            # Only A's own slug or id opens anything, with a month the route accepts.
            assert ref in ("alpha", str(pair.a.org_id))
        assert_nothing_of_b(response.text)
