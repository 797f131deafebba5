"""Every route refuses callers it should not serve; routes added later are covered too.

The routes are read from the app itself, so a new route is checked without touching
this file. A route that must be open to anonymous callers is listed in OPEN_PATHS.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

OPEN_PATHS = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/api/auth/token",
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
    "/login",
    # Preferences of the browser (language, theme), no account data.
    "/lang/{language}",
    "/theme/{theme}",
}
INGEST_PREFIX = "/api/v1/"
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
# Writes a viewer may make: ending its own session.
VIEWER_WRITES = {("POST", "/api/auth/logout")}


@dataclass(frozen=True)
class Endpoint:
    method: str
    template: str

    @property
    def url(self) -> str:
        # Any path parameter: "1" is a valid int and a valid string id.
        return re.sub(r"\{[^}]+\}", "1", self.template)

    @property
    def is_api(self) -> bool:
        return self.template.startswith("/api/")

    @property
    def is_ingest(self) -> bool:
        return self.template.startswith(INGEST_PREFIX)


def endpoints(app: FastAPI) -> list[Endpoint]:
    found: list[Endpoint] = []
    for route in iter_route_contexts(app.routes):
        original = route.original_route
        if isinstance(original, Mount):
            # Static assets are public; any other mounted app would escape this check.
            assert isinstance(original.app, StaticFiles), f"unchecked mount {original.path}"
            continue
        assert route.path is not None, f"unchecked route {original!r}"
        assert route.methods, f"unchecked route {original!r}"
        for method in sorted(route.methods - {"HEAD", "OPTIONS"}):
            found.append(Endpoint(method, route.path))
    # The walk must see the app's routes, or every check below would pass vacuously.
    templates = {endpoint.template for endpoint in found}
    assert {"/api/organizations", "/api/licenses", "/api/audit-log"} <= templates
    return found


def guarded(app: FastAPI) -> list[Endpoint]:
    return [e for e in endpoints(app) if e.template not in OPEN_PATHS]


def admin_api(app: FastAPI) -> list[Endpoint]:
    return [e for e in guarded(app) if e.is_api and not e.is_ingest]


def call(client: TestClient, endpoint: Endpoint, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    # Not followed: a page answers an anonymous caller with a redirect to the login page.
    return client.request(
        endpoint.method, endpoint.url, headers=headers or {}, follow_redirects=False
    )


def test_every_route_refuses_an_anonymous_caller(app, client):
    client.cookies.clear()
    failures = []
    for endpoint in guarded(app):
        response = call(client, endpoint)
        if endpoint.is_api:
            ok = response.status_code == 401 and response.json()["error"]["code"] in {
                "not_authenticated",
                "invalid_api_key",
            }
        else:
            # Pages send an anonymous browser to the login page instead.
            ok = response.status_code == 401 or (
                response.status_code in {302, 303, 307}
                and "/login" in response.headers.get("location", "")
            )
        if not ok:
            failures.append(f"{endpoint.method} {endpoint.template}: {response.status_code}")
    assert not failures, "routes open to anonymous callers (or add to OPEN_PATHS):\n" + "\n".join(
        failures
    )


def test_open_routes_need_no_credentials(client):
    client.cookies.clear()
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert client.get(path).status_code == 200, path
    # The login route answers a bad login itself (401 from the form, not from a guard).
    response = client.post("/api/auth/token", data={"username": "x@example.com", "password": "y"})
    assert response.json()["error"]["code"] == "invalid_credentials"


def test_ingest_key_is_refused_on_every_admin_route(app, client, ingest_key):
    _, secret = ingest_key
    failures = []
    for endpoint in admin_api(app):
        response = call(client, endpoint, {"Authorization": f"Bearer {secret}"})
        if response.status_code != 403 or (
            response.json()["error"]["code"] != "ingest_key_not_allowed"
        ):
            failures.append(f"{endpoint.method} {endpoint.template}: {response.status_code}")
    assert not failures, "\n".join(failures)


def test_viewer_cannot_write_on_any_admin_route(app, client, viewer_headers):
    failures = []
    for endpoint in admin_api(app):
        if endpoint.method not in UNSAFE or (endpoint.method, endpoint.template) in VIEWER_WRITES:
            continue
        response = call(client, endpoint, viewer_headers)
        if response.status_code != 403 or response.json()["error"]["code"] != "admin_required":
            failures.append(f"{endpoint.method} {endpoint.template}: {response.status_code}")
    assert not failures, "\n".join(failures)


def test_viewer_can_read_every_admin_route(app, client, viewer_headers):
    failures = []
    for endpoint in admin_api(app):
        if endpoint.method != "GET":
            continue
        response = call(client, endpoint, viewer_headers)
        status = response.status_code
        # Served: a success, or the documented answer to id 1 that does not exist (404) or
        # to a required query parameter left out (422); never a refusal, never a 5xx.
        code = response.json()["error"]["code"] if status in {404, 422} else None
        served = (
            status == 200
            or (status == 404 and code.endswith("not_found"))
            or (status == 422 and code == "validation_error")
        )
        if not served:
            failures.append(f"{endpoint.method} {endpoint.template}: {status} {code}")
    assert not failures, "\n".join(failures)


def test_admin_token_is_refused_on_every_ingest_route(app, client, admin_headers):
    from tests.conftest import PROBE_PATH, add_ingest_probe

    add_ingest_probe(app)
    ingest = [e for e in guarded(app) if e.is_ingest]
    assert any(e.template == PROBE_PATH for e in ingest)
    failures = []
    for endpoint in ingest:
        response = call(client, endpoint, admin_headers)
        if response.status_code != 401:
            failures.append(f"{endpoint.method} {endpoint.template}: {response.status_code}")
    assert not failures, "\n".join(failures)
