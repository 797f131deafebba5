"""A JSON body means one thing or is refused: duplicate keys, NaN, bad UTF-8, too deep."""

from __future__ import annotations

import json

import pytest
import starlette.requests
from sqlalchemy import func, select

from tokenledger.organizations.models import Organization
from tokenledger.usage.models import UsageEvent

JSON = {"Content-Type": "application/json"}


def _events_stored(database) -> int:  # type: ignore[no-untyped-def]
    with database.session(write=False) as session:
        return int(session.scalar(select(func.count()).select_from(UsageEvent)) or 0)


def _refused(response, fragment: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["details"][0]["loc"] == ["body"]
    assert fragment in error["message"]


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (
            '{"events": [{"id": "a", "model": "m", "input_tokens": 1, "input_tokens": 999999}]}',
            "input_tokens",
        ),
        ('{"events": [{"id": "a", "id": "b", "model": "m"}]}', "id"),
        ('{"events": "junk", "events": [{"id": "a", "model": "m"}]}', "events"),
        ('{"events": [{"id": "a", "model": "m", "metadata": {"k": 1, "k": 2}}]}', "k"),
    ],
)
def test_duplicate_keys_in_a_usage_batch_are_refused(client, database, make_tenant, body, key):
    tenant = make_tenant()
    response = client.post("/api/v1/usage", content=body, headers={**tenant.headers, **JSON})
    _refused(response, f"duplicate key '{key}'")
    assert _events_stored(database) == 0


def test_duplicate_keys_in_admin_bodies_are_refused(client, database, admin_headers):
    body = '{"name": "First", "name": "Second"}'
    response = client.post("/api/organizations", content=body, headers={**admin_headers, **JSON})
    _refused(response, "duplicate key 'name'")
    with database.session(write=False) as session:
        assert session.scalar(select(func.count()).select_from(Organization)) == 0
    # The same body without the duplicate is fine, and so is a +json media type.
    response = client.post(
        "/api/organizations",
        content='{"name": "First"}',
        headers={**admin_headers, "Content-Type": "application/merge-patch+json"},
    )
    assert response.status_code == 201


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_standard_numbers_are_refused(client, database, make_tenant, constant):
    tenant = make_tenant()
    body = '{"events": [{"id": "a", "model": "m", "metadata": {"x": CONSTANT}}]}'
    body = body.replace("CONSTANT", constant)
    response = client.post("/api/v1/usage", content=body, headers={**tenant.headers, **JSON})
    _refused(response, f"{constant} is not a JSON number")
    assert _events_stored(database) == 0


def test_payload_errors_are_422_invalid_utf8_and_nesting_too(client, make_tenant):
    """The README's rule: a body that is not acceptable JSON is a 422, whatever is wrong."""
    tenant = make_tenant()
    headers = {**tenant.headers, **JSON}
    not_utf8 = '{"events": [{"id": "caf\u00e9", "model": "m"}]}'.encode("latin-1")
    _refused(client.post("/api/v1/usage", content=not_utf8, headers=headers), "not UTF-8")
    deep = "[" * 100_000 + "]" * 100_000
    _refused(client.post("/api/v1/usage", content=deep, headers=headers), "nested too deeply")
    _refused(client.post("/api/v1/usage", content='{"events": [', headers=headers), "invalid JSON")


def test_a_plain_batch_still_goes_through(client, make_tenant):
    tenant = make_tenant()
    body = json.dumps({"events": [{"id": "a", "model": "m", "metadata": {"k": [1, {"n": None}]}}]})
    response = client.post("/api/v1/usage", content=body, headers={**tenant.headers, **JSON})
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["status"] == "created"


def test_a_usage_body_is_parsed_once(client, database, make_tenant, monkeypatch):
    """The usage route takes the document StrictJson read; Starlette's parser never runs."""

    def second_parse(_request):  # type: ignore[no-untyped-def]
        raise AssertionError("the body was parsed a second time")

    monkeypatch.setattr(starlette.requests.Request, "json", second_parse)
    tenant = make_tenant()
    body = {"events": [{"id": "once", "model": "claude-sonnet-4-5", "input_tokens": 10}]}
    response = client.post("/api/v1/usage", json=body, headers=tenant.headers)
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["status"] == "created"
    assert _events_stored(database) == 1
