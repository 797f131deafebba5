"""Every response carries the security headers; answers and tokens are never cached."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.conftest import ADMIN_PASSWORD, add_admin, make_settings
from tokenledger.app import create_app


def _assert_secured(response, *, cacheable: bool = False) -> None:  # type: ignore[no-untyped-def]
    headers = response.headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] in {"same-origin", "no-referrer"}
    policy = {
        directive.split()[0]: directive.split()[1:]
        for directive in headers["content-security-policy"].split("; ")
    }
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["default-src"] == ["'self'"]
    assert "'unsafe-inline'" not in headers["content-security-policy"]
    assert "'unsafe-eval'" not in headers["content-security-policy"]
    if cacheable:
        assert "no-store" not in headers["cache-control"]
    else:
        assert headers["cache-control"] == "no-store"


def test_the_token_response_is_never_stored(client, database):
    add_admin(database, "login@example.com")
    response = client.post(
        "/api/auth/token", data={"username": "login@example.com", "password": ADMIN_PASSWORD}
    )
    assert response.status_code == 200
    _assert_secured(response)
    assert response.headers["cache-control"] == "no-store"  # RFC 6749 section 5.1
    assert response.headers["pragma"] == "no-cache"
    failed = client.post("/api/auth/token", data={"username": "x@example.com", "password": "no"})
    assert failed.status_code == 401
    _assert_secured(failed)


def test_every_kind_of_answer_carries_the_headers(client, admin_headers, make_tenant):
    tenant = make_tenant(license={})
    answers = [
        client.get("/healthz"),
        client.get("/readyz"),
        client.get("/metrics"),
        client.get("/openapi.json"),
        client.get("/api/organizations", headers=admin_headers),
        client.get("/api/organizations"),  # 401
        client.get("/api/organizations/999999", headers=admin_headers),  # 404
        client.put("/api/organizations", headers=admin_headers),  # 405
        client.post("/api/organizations", json={"nam": "x"}, headers=admin_headers),  # 422
        client.post(
            "/api/organizations",
            content='{"name": "a", "name": "b"}',
            headers={**admin_headers, "Content-Type": "application/json"},
        ),  # 422 before FastAPI
        client.get("/api/v1/budget", headers=tenant.headers),
        client.get(
            f"/api/token-usage/{tenant.org_id}/events.csv",
            params={"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z"},
            headers=admin_headers,
        ),
        client.get("/no/such/page"),
    ]
    assert [a.status_code for a in answers] == [
        200, 200, 200, 200, 200, 401, 404, 405, 422, 422, 200, 200, 404,
    ]  # fmt: skip
    for answer in answers:
        _assert_secured(answer)


@pytest.fixture
def failing_client(database_url: str) -> Iterator[TestClient]:
    app = create_app(make_settings(database_url, max_body_bytes=1024))

    @app.get("/api/_boom")
    def _boom() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_errors_from_outside_the_app_carry_them_too(failing_client):
    response = failing_client.get("/api/_boom")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    _assert_secured(response)
    too_large = failing_client.post("/api/organizations", json={"name": "x" * 2000})
    assert too_large.status_code == 413
    _assert_secured(too_large)
