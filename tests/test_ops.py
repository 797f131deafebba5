"""Operations: health, readiness, metrics, error bodies, the request body limit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import make_settings
from tokenledger.app import create_app


def _samples(metrics_text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_on_a_migrated_database(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


def test_readyz_on_an_unmigrated_database(empty_database_url):
    with TestClient(create_app(make_settings(empty_database_url))) as client:
        assert client.get("/healthz").status_code == 200
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "not_migrated"
    assert "tokenledger migrate" in response.json()["error"]["message"]


@pytest.fixture(params=["sqlite", "postgresql"])
def unreachable_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        # A directory where the database file should be: it cannot be opened.
        (tmp_path / "db").mkdir()
        return f"sqlite:///{tmp_path / 'db'}"
    # Nothing listens on port 1.
    return "postgresql://nobody@127.0.0.1:1/nothing?connect_timeout=2"


def test_readyz_when_the_database_is_unreachable(unreachable_database_url):
    with TestClient(create_app(make_settings(unreachable_database_url))) as client:
        assert client.get("/healthz").status_code == 200
        response = client.get("/readyz")
        metrics = _samples(client.get("/metrics").text)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "database_unreachable"
    assert metrics[("tokenledger_database_errors_total", ())] == 1


def test_metrics_count_requests_by_route_template(client, admin_headers):
    for org_id in (1, 2, 3):
        client.get(f"/api/organizations/{org_id}", headers=admin_headers)
    client.get("/healthz")
    client.get("/no/such/page")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)

    def requests(method: str, route: str, status: str) -> float:
        labels = (("method", method), ("route", route), ("status", status))
        return samples.get(("tokenledger_http_requests_total", labels), 0)

    # One series per route template, not per id.
    assert requests("GET", "/api/organizations/{org_id}", "404") == 3
    assert requests("GET", "/healthz", "200") == 1
    assert requests("GET", "unmatched", "404") == 1
    assert not any("/api/organizations/1" in str(key) for key in samples)
    latency = (
        "tokenledger_http_request_duration_seconds_count",
        (("method", "GET"), ("route", "/healthz")),
    )
    assert samples[latency] == 1
    assert samples[("tokenledger_database_errors_total", ())] == 0


def test_errors_are_json_from_one_handler(client, admin_headers):
    response = client.get("/no/such/page")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert set(response.json()["error"]) >= {"code", "message"}

    response = client.put("/api/organizations", headers=admin_headers)
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"

    response = client.post(
        "/api/organizations",
        content=b"{not json",
        headers={**admin_headers, "content-type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"

    response = client.post(
        "/api/organizations", json={"name": "A", "color": "red"}, headers=admin_headers
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert "color" in error["message"]
    assert error["details"][0]["loc"] == ["body", "color"]


@pytest.fixture
def small_body_client(database_url: str) -> Iterator[TestClient]:
    app = create_app(make_settings(database_url, max_body_bytes=1024))
    with TestClient(app) as client:
        yield client


def test_body_over_the_limit_is_413(small_body_client, admin_headers):
    client = small_body_client
    expected = {"error": {"code": "body_too_large", "message": "request body over 1024 bytes"}}

    response = client.post("/api/organizations", json={"name": "x" * 2000}, headers=admin_headers)
    assert response.status_code == 413
    assert response.json() == expected

    # A streamed body without Content-Length is cut off as well.
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(10):
            yield b"x" * 200
        yield b'"}'

    response = client.post(
        "/api/organizations",
        content=chunks(),
        headers={**admin_headers, "content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json() == expected

    # Even before authentication: nobody gets to send a huge body.
    response = client.post("/api/organizations", json={"name": "x" * 2000})
    assert response.status_code == 413

    # Under the limit, nothing changes.
    response = client.post("/api/organizations", json={"name": "x" * 100}, headers=admin_headers)
    assert response.status_code == 201
    assert client.get("/api/organizations", headers=admin_headers).json()["total"] == 1
