"""Every integer a query takes has a documented maximum, and a 422 past it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import add_admin

# Reported from outside: these gave 500 (OverflowError binding the number).
HUGE = "2695404139111117750272"


def _integer_query_parameters(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    found = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                types = [parameter["schema"], *parameter["schema"].get("anyOf", [])]
                if any(t.get("type") == "integer" for t in types):
                    found.append((method, path, parameter))
    return found


def _integer_schema(parameter: dict[str, Any]) -> dict[str, Any]:
    schema = parameter["schema"]
    for option in schema.get("anyOf", [schema]):
        if option.get("type") == "integer":
            return option  # type: ignore[no-any-return]
    raise AssertionError(parameter)


def _url(path: str, org_id: int) -> str:
    # Path ids that exist, so the 422 comes from the query and not from a missing row.
    for name in ("{org_id}", "{license_id}", "{webhook_id}"):
        path = path.replace(name, str(org_id))
    return path


def test_every_integer_query_parameter_has_a_maximum(client):
    schema = client.get("/openapi.json").json()
    parameters = _integer_query_parameters(schema)
    assert {p["name"] for _m, _p, p in parameters} >= {"limit", "offset", "days"}
    for method, path, parameter in parameters:
        integer = _integer_schema(parameter)
        assert "maximum" in integer, (method, path, parameter["name"])


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/api/organizations", "offset"),
        ("/api/audit-log", "offset"),
        ("/api/alerts", "offset"),
        ("/api/alerts", "organization_id"),
        ("/api/organizations", "limit"),
    ],
)
def test_the_reported_offsets_are_refused(client, admin_headers, path, name):
    response = client.get(path, params={name: HUGE}, headers=admin_headers)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation_error"


def test_past_each_maximum_is_a_422_and_the_maximum_itself_is_served(
    client, admin_headers, make_tenant
):
    tenant = make_tenant(license={})
    schema = client.get("/openapi.json").json()
    checked = 0
    for method, path, parameter in _integer_query_parameters(schema):
        if parameter["in"] != "query" or method != "get" or "{" in _url(path, tenant.org_id):
            continue
        maximum = _integer_schema(parameter)["maximum"]
        url = _url(path, tenant.org_id)
        base: dict[str, str] = {}
        if path.endswith("events.csv"):
            base = {"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z"}
        if path == "/api/provider-reports/comparison":
            base = {"provider": "anthropic", "from": "2026-01-01", "to": "2026-01-31"}
        for value, expected in ((maximum + 1, {422}), (HUGE, {422}), (maximum, {200, 404})):
            params = {**base, parameter["name"]: str(value)}
            response = client.get(url, params=params, headers=admin_headers)
            assert response.status_code in expected, (url, parameter["name"], value)
        checked += 1
    assert checked >= 7


def test_ids_in_page_paths_past_the_largest_row_id_are_refused(client, database):
    """The web UI's pages take the same ids: a number past 64 bits was a 500 there too."""
    from tests.conftest import SECRET
    from tokenledger.auth.tokens import issue_token
    from tokenledger.deps import SESSION_COOKIE

    token, _claims = issue_token(SECRET, add_admin(database, "pages@example.com"), 60)
    client.cookies.set(SESSION_COOKIE, token)
    for path in (
        f"/organizations/{HUGE}",
        f"/organizations/{HUGE}/licenses",
        f"/organizations/{HUGE}/usage",
        f"/licenses/{HUGE}/edit",
        "/organizations/2147483648",
    ):
        response = client.get(path, follow_redirects=False)
        assert response.status_code in {404, 422}, (path, response.status_code)
