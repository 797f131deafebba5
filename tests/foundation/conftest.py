"""Fixtures of the foundation tests: empty databases, ingest keys, extra probe routes."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import make_url, text

from tests.conftest import ADMIN_PASSWORD, make_settings
from tokenledger.auth.service import create_api_key
from tokenledger.db import Database
from tokenledger.deps import IngestKey

PROBE_PATH = "/api/v1/_foundation_probe"


@pytest.fixture
def empty_database_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    """A database of the same backend as `database_url` with no schema at all.

    SQLite: a new file. PostgreSQL: a new schema on the test server, reached through the
    connection's search_path, so the shared migrated schema is left alone.
    """
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    schema = f"tl_empty_{secrets.token_hex(4)}"
    admin = Database(make_settings(database_url))
    with admin.engine.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(database_url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.engine.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def add_ingest_probe(app: FastAPI) -> None:
    """An ingest route built on the real IngestKey dependency, for the key rules.

    Spec ingest routes (/api/v1/...) belong to other issues; this one exists only in tests.
    """

    @app.get(PROBE_PATH)
    def _probe(key: IngestKey) -> dict[str, int | None]:
        return {"key_id": key.key_id, "organization_id": key.organization_id}


@pytest.fixture
def probe_client(app: FastAPI, client: TestClient) -> TestClient:
    add_ingest_probe(app)
    return client


@pytest.fixture
def ingest_key(database: Database) -> tuple[int, str]:
    """A service ingest key, made through tokenledger.auth.service.create_api_key."""
    with database.session(write=True) as session:
        key, secret = create_api_key(session, "foundation tests", None, actor=None)
        return key.id, secret


def login(client: TestClient, email: str, password: str = ADMIN_PASSWORD) -> dict[str, str]:
    response = client.post("/api/auth/token", data={"username": email, "password": password})
    assert response.status_code == 200, response.text
    return response.json()
