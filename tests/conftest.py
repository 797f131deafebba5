"""Fixtures: every database test runs on a real SQLite file and a real PostgreSQL server.

Isolation: SQLite tests get a fresh copy of a database migrated once per session;
PostgreSQL tests share one database migrated once, emptied before each test.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from tokenledger.app import create_app
from tokenledger.config import Settings
from tokenledger.db import Database
from tokenledger.migrations import runner
from tokenledger.models import Base

POSTGRES_URL = os.environ.get("TOKENLEDGER_TEST_POSTGRES_URL")
REQUIRE_POSTGRES = os.environ.get("TOKENLEDGER_TEST_REQUIRE_POSTGRES") == "1"
SECRET = "test-secret-key-with-enough-entropy-0123456789"
ADMIN_PASSWORD = "correct-horse-battery"


def make_settings(database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "secret_key": SECRET,
        "webhook_worker": False,
        "sqlite_synchronous": "NORMAL",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    database = Database(make_settings(f"sqlite:///{path}"))
    runner.upgrade(database.engine)
    with database.engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    database.dispose()
    return path


@pytest.fixture(scope="session")
def postgres_migrated() -> str:
    if not POSTGRES_URL:
        if REQUIRE_POSTGRES:
            pytest.fail("TOKENLEDGER_TEST_POSTGRES_URL is required here but not set")
        pytest.skip("no PostgreSQL: set TOKENLEDGER_TEST_POSTGRES_URL (scripts/with-postgres.sh)")
    database = Database(make_settings(POSTGRES_URL))
    with database.engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    runner.upgrade(database.engine)
    database.dispose()
    return POSTGRES_URL


def _empty_postgres(url: str) -> None:
    database = Database(make_settings(url))
    tables = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
    with database.engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    database.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "tokenledger.db"
        shutil.copy(template, path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_migrated")
    _empty_postgres(url)
    return url


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture
def database(settings: Settings) -> Iterator[Database]:
    database = Database(settings)
    yield database
    database.dispose()


@pytest.fixture
def app(settings: Settings):  # type: ignore[no-untyped-def]
    return create_app(settings)


@pytest.fixture
def client(app) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(app) as test_client:
        yield test_client


def _token(client: TestClient, email: str, password: str) -> str:
    response = client.post("/api/auth/token", data={"username": email, "password": password})
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    client.cookies.clear()
    return token


@pytest.fixture
def admin_headers(client: TestClient, database: Database) -> dict[str, str]:
    from tokenledger.auth.service import create_admin

    with database.session(write=True) as session:
        create_admin(session, "admin@example.com", ADMIN_PASSWORD, "admin")
    return {"Authorization": f"Bearer {_token(client, 'admin@example.com', ADMIN_PASSWORD)}"}


@pytest.fixture
def viewer_headers(client: TestClient, database: Database) -> dict[str, str]:
    from tokenledger.auth.service import create_admin

    with database.session(write=True) as session:
        create_admin(session, "viewer@example.com", ADMIN_PASSWORD, "viewer")
    return {"Authorization": f"Bearer {_token(client, 'viewer@example.com', ADMIN_PASSWORD)}"}
