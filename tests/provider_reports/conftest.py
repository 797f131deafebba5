"""Fixtures of the provider bill tests: a stand-in provider server, settings that point the
SDKs at it, and a ledger in Europe/Berlin (so that UTC days and billing days differ)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.conftest import make_settings
from tests.factories import make_org
from tests.provider_reports.standin import ADMIN_KEY, OPENAI_ADMIN_KEY, StandIn

from tokenledger.auth.service import create_api_key
from tokenledger.config import Settings
from tokenledger.db import Database


@pytest.fixture
def standin() -> Iterator[StandIn]:
    server = StandIn()
    with server.running():
        yield server


@pytest.fixture
def settings(database_url: str, standin: StandIn) -> Settings:
    return make_settings(
        database_url,
        billing_timezone="Europe/Berlin",
        anthropic_admin_key=ADMIN_KEY,
        openai_admin_key=OPENAI_ADMIN_KEY,
        anthropic_base_url=standin.url,
        openai_base_url=standin.url + "/v1",
    )


@pytest.fixture
def orgs(database: Database) -> dict[str, Any]:
    """Two organizations and a service ingest key."""
    with database.session(write=True) as session:
        acme = make_org(session, name="Acme", slug="acme")
        beta = make_org(session, name="Beta", slug="beta")
        _key, secret = create_api_key(session, "service", None, actor=None)
        return {"acme": acme.id, "beta": beta.id, "key": {"Authorization": f"Bearer {secret}"}}


def ingest(client: TestClient, headers: dict[str, str], events: list[dict[str, Any]]) -> None:
    answer = client.post("/api/v1/usage", json={"events": events}, headers=headers)
    assert answer.status_code == 200, answer.text
    assert {result["status"] for result in answer.json()["results"]} == {"created"}
