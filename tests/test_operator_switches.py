"""What an operator can close in production: the metrics and the API docs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.conftest import make_settings
from tokenledger.app import create_app


@pytest.fixture
def closed_client(database_url: str) -> Iterator[TestClient]:
    settings = make_settings(database_url, docs=False, metrics_token="metrics-secret-0123456789")
    with TestClient(create_app(settings)) as client:
        yield client


def test_an_operator_can_close_docs_and_metrics(closed_client):
    client = closed_client
    for path in ("/docs", "/openapi.json", "/redoc", "/docs/assets/vendor/swagger-ui.css"):
        assert client.get(path).status_code == 404, path
    assert client.get("/metrics").status_code == 401
    wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "not_authenticated"
    right = client.get("/metrics", headers={"Authorization": "Bearer metrics-secret-0123456789"})
    assert right.status_code == 200
    assert "tokenledger_http_requests_total" in right.text
    # Health stays open for load balancers and orchestrators.
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_metrics_are_open_without_a_token(client):
    assert client.get("/metrics").status_code == 200
