"""Every instant a caller gives lies in one documented range (1970 up to 9000, UTC), is an
RFC 3339 string with an offset, and anything else is a 422 (a 4xx page on the web UI).

Reported from outside: year 1 with a positive offset and 9999-12-31 with a negative one
gave 500 in usage timestamps, refresh times, license validity, override dates, reprice
ranges and the CSV range (PostgreSQL sent the header and dropped the connection), and
`?month=0000-01` on the pages; integers were taken as date-times (`{"from": 0}`).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import SECRET, add_admin
from tokenledger.auth.tokens import issue_token
from tokenledger.deps import SESSION_COOKIE

# Outside the range: the ends of datetime itself, moved past them by their offset, and
# the first instants outside the documented range on either side.
OUTSIDE: list[Any] = [
    "0001-01-01T00:00:00+01:00",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59-01:00",
    "9999-12-31T23:59:59Z",
    "1969-12-31T23:59:59Z",
    "9000-01-01T00:00:00Z",
    "8999-12-31T23:30:00-01:00",
]
# Not RFC 3339 date-time strings at all.
NOT_TEXT: list[Any] = [0, 1_700_000_000, 1.5, True]


def _codes(response: Any) -> tuple[int, str]:
    return response.status_code, response.text[:300]


@pytest.mark.parametrize("value", OUTSIDE + NOT_TEXT)
def test_each_instant_of_a_request_body_is_bounded(client, admin_headers, make_tenant, value):
    tenant = make_tenant(license={})
    answers = {
        "usage": client.post(
            "/api/v1/usage",
            json={"events": [{"id": "e", "model": "claude-sonnet-4-5", "timestamp": value}]},
            headers=tenant.headers,
        ),
        "refresh started": client.put(
            "/api/v1/refreshes/r1",
            json={"status": "running", "started_at": value},
            headers=tenant.headers,
        ),
        "refresh finished": client.put(
            "/api/v1/refreshes/r2",
            json={"status": "completed", "finished_at": value},
            headers=tenant.headers,
        ),
        "license from": client.post(
            "/api/licenses",
            json={
                "organization_id": tenant.org_id,
                "status": "suspended",
                "credits_total": "10",
                "cost_per_credit": "0.01",
                "valid_from": value,
            },
            headers=admin_headers,
        ),
        "license until": client.patch(
            f"/api/licenses/{tenant.license_id}",
            json={"valid_until": value},
            headers=admin_headers,
        ),
        "override from": client.put(
            "/api/pricing/overrides/anthropic/edge-model",
            json={"input": "1", "output": "2", "valid_from": value},
            headers=admin_headers,
        ),
        "override until": client.put(
            "/api/pricing/overrides/anthropic/edge-model",
            json={"input": "1", "output": "2", "valid_until": value},
            headers=admin_headers,
        ),
        "reprice from": client.post(
            "/api/pricing/reprice",
            json={"model": "claude-sonnet-4-5", "from": value, "to": "2026-01-01T00:00:00Z"},
            headers=admin_headers,
        ),
        "reprice to": client.post(
            "/api/pricing/reprice",
            json={"model": "claude-sonnet-4-5", "from": "2026-01-01T00:00:00Z", "to": value},
            headers=admin_headers,
        ),
    }
    for name, response in answers.items():
        assert response.status_code == 422, (name, _codes(response))
        assert response.json()["error"]["code"] == "validation_error", name


@pytest.mark.parametrize("value", OUTSIDE)
def test_each_instant_of_a_query_is_bounded(client, admin_headers, make_tenant, value):
    tenant = make_tenant(license={})
    within = "2026-01-01T00:00:00Z"
    csv = f"/api/token-usage/{tenant.org_id}/events.csv"
    for params in ({"from": value, "to": within}, {"from": within, "to": value}):
        response = client.get(csv, params=params, headers=admin_headers)
        assert response.status_code == 422, (params, _codes(response))
    response = client.delete(
        "/api/pricing/overrides/anthropic/edge-model",
        params={"valid_from": value},
        headers=admin_headers,
    )
    assert response.status_code == 422, _codes(response)


def test_the_ends_of_the_range_are_served(client, admin_headers, make_tenant):
    tenant = make_tenant(license={})
    csv = f"/api/token-usage/{tenant.org_id}/events.csv"
    response = client.get(
        csv,
        params={"from": "1970-01-01T00:00:00Z", "to": "8999-12-31T23:59:59.999999Z"},
        headers=admin_headers,
    )
    assert response.status_code == 200, _codes(response)
    assert response.text.count("\n") == 1  # the header alone
    response = client.patch(
        f"/api/licenses/{tenant.license_id}",
        json={"valid_until": "8999-12-31T23:59:59+00:00"},
        headers=admin_headers,
    )
    assert response.status_code == 200, _codes(response)


@pytest.mark.parametrize("month", ["0000-01", "0001-01", "1969-12", "9000-01", "9999-12"])
def test_months_outside_the_range_are_refused(client, database, admin_headers, make_tenant, month):
    tenant = make_tenant(license={})
    response = client.get(
        f"/api/token-usage/{tenant.org_id}/models", params={"month": month}, headers=admin_headers
    )
    assert response.status_code == 422, _codes(response)
    token, _claims = issue_token(SECRET, add_admin(database, f"pages-{month}@example.com"), 60)
    client.cookies.set(SESSION_COOKIE, token)
    page = client.get(f"/organizations/{tenant.org_id}/usage", params={"month": month})
    assert page.status_code in {400, 422}, _codes(page)
    assert page.headers["content-type"].startswith("text/html")
    assert (
        client.get(f"/organizations/{tenant.org_id}/usage", params={"month": "1970-01"}).status_code
        == 200
    )


def test_the_schema_states_the_range(client):
    schema = client.get("/openapi.json").json()
    usage = schema["components"]["schemas"]["UsageEventIn"]["properties"]["timestamp"]
    text = str(usage)
    assert "1970-01-01T00:00:00Z" in text
    assert "9000-01-01T00:00:00Z" in text


@pytest.mark.parametrize("day", ["0001-01-01", "9999-12-31", "1969-12-31", "9000-01-01", "0"])
def test_days_of_a_report_range_are_bounded_alike(client, admin_headers, day):
    for params in ({"from": day, "to": "2026-11-30"}, {"from": "2026-11-01", "to": day}):
        response = client.get(
            "/api/provider-reports/comparison",
            params={"provider": "anthropic", **params},
            headers=admin_headers,
        )
        assert response.status_code == 422, (params, _codes(response))
    response = client.get(
        "/api/provider-reports/comparison",
        params={"provider": "anthropic", "from": "1970-01-01", "to": "1970-01-02"},
        headers=admin_headers,
    )
    assert response.status_code == 200, _codes(response)
