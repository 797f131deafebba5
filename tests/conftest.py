"""Fixtures: every database test runs on a real SQLite file and a real PostgreSQL server.

Isolation: SQLite tests get a fresh copy of a database migrated once per session;
PostgreSQL tests share one database migrated once, emptied before each test.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import make_url, text
from sqlalchemy.orm import Session

from tests.factories import make_license, make_org
from tokenledger.app import UVICORN_OPTIONS, create_app
from tokenledger.auth.models import AdminUser
from tokenledger.auth.passwords import hash_password
from tokenledger.auth.service import create_api_key
from tokenledger.auth.tokens import issue_token
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


_METRICS_FILES = ("counter_*.db", "histogram_*.db", "gauge_*.db", "summary_*.db")


@pytest.fixture(scope="session", autouse=True)
def no_metrics_files_in_the_working_directory() -> Iterator[None]:
    """No test run leaves prometheus_client's multiprocess files where it runs (two were
    once committed at the repository's root)."""
    cwd = Path.cwd()
    before = {path for pattern in _METRICS_FILES for path in cwd.glob(pattern)}
    yield
    after = {path for pattern in _METRICS_FILES for path in cwd.glob(pattern)}
    assert after <= before, f"metrics files written into {cwd}: {sorted(after - before)}"


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
def postgres_migrated() -> Iterator[str]:
    """A database of this test run's own on the server, migrated once, dropped at the end."""
    if not POSTGRES_URL:
        if REQUIRE_POSTGRES:
            pytest.fail("TOKENLEDGER_TEST_POSTGRES_URL is required here but not set")
        pytest.skip("no PostgreSQL: set TOKENLEDGER_TEST_POSTGRES_URL (scripts/with-postgres.sh)")
    name = f"tokenledger_run_{secrets.token_hex(4)}"
    server = Database(make_settings(POSTGRES_URL))
    autocommit = server.engine.execution_options(isolation_level="AUTOCOMMIT")
    with autocommit.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    database = Database(make_settings(url))
    runner.upgrade(database.engine)
    database.dispose()
    try:
        yield url
    finally:
        with autocommit.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()


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


# "Now" of the tests whose figures depend on the date: a Wednesday mid-month, mid-day,
# far from any month, day or daylight-saving change in UTC and Europe/Berlin.
NOW = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)


class FixedClock:
    """The app's clock in a test (create_app(clock=...)): it stands still until set."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> FixedClock:
    """Set clock.now before the requests of a test to run them at another instant."""
    return FixedClock(NOW)


@pytest.fixture
def fixed_app(settings: Settings, clock: FixedClock):  # type: ignore[no-untyped-def]
    return create_app(settings, clock=clock)


@pytest.fixture
def fixed_client(fixed_app) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    """A client of the app whose "now" is the clock fixture's (NOW unless a test sets it)."""
    with TestClient(fixed_app) as test_client:
        yield test_client


@cache
def password_hash() -> str:
    # argon2id is slow on purpose (~0.1 s a hash); one real hash serves the whole run.
    return hash_password(ADMIN_PASSWORD)


def add_admin(database: Database, email: str, role: str = "admin") -> int:
    """An account with ADMIN_PASSWORD, without paying for a new argon2id hash each time."""
    with database.session(write=True) as session:
        user = AdminUser(email=email, password_hash=password_hash(), role=role)
        session.add(user)
        session.flush()
        return user.id


def admin_bearer(user_id: int) -> dict[str, str]:
    """An admin's headers: a real signed token, as POST /api/auth/token issues (tested there)."""
    token, _ = issue_token(SECRET, user_id, 60)
    return {"Authorization": f"Bearer {token}"}


def key_bearer(secret: str) -> dict[str, str]:
    """An ingest key's headers."""
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def admin_headers(database: Database) -> dict[str, str]:
    return admin_bearer(add_admin(database, "admin@example.com", "admin"))


@pytest.fixture
def viewer_headers(database: Database) -> dict[str, str]:
    return admin_bearer(add_admin(database, "viewer@example.com", "viewer"))


@contextmanager
def write(database: Database) -> Iterator[Session]:
    """A write session of its own (committed at the end), for a test's setup or checks."""
    with database.session(write=True) as session:
        yield session


@dataclass(frozen=True)
class Tenant:
    """An organization with an ingest key of its own, and the licenses made for it."""

    org_id: int
    slug: str
    key: str
    license_ids: tuple[int, ...]

    @property
    def headers(self) -> dict[str, str]:
        return key_bearer(self.key)

    @property
    def license_id(self) -> int | None:
        """The tenant's license: None without one (a tenant with several has no one)."""
        if not self.license_ids:
            return None
        (license_id,) = self.license_ids
        return license_id


_tenants = itertools.count(1)


def new_tenant(
    database: Database, *licenses: dict[str, Any], now: datetime | None = None, **org: Any
) -> Tenant:
    """An organization (overrides in org), one license per dict of overrides given (valid
    from `now` unless they say when), and an ingest key of the organization."""
    org.setdefault("slug", f"tenant-{next(_tenants)}")
    with write(database) as session:
        organization = make_org(session, **org)
        made = [make_license(session, organization, now, **overrides) for overrides in licenses]
        _key, secret = create_api_key(session, "tests", organization.slug, actor=None)
        return Tenant(organization.id, organization.slug, secret, tuple(lic.id for lic in made))


@pytest.fixture
def make_tenant(database: Database, clock: FixedClock) -> Callable[..., Tenant]:
    """make_tenant(*licenses, license=None, **org): new_tenant, with licenses valid from the
    clock fixture's now (NOW unless the test sets it) unless the overrides say when."""

    def _make(
        *licenses: dict[str, Any], license: dict[str, Any] | None = None, **org: Any
    ) -> Tenant:
        given = (*licenses, *(() if license is None else (license,)))
        return new_tenant(database, *given, now=clock(), **org)

    return _make


def free_port() -> int:
    """A loopback TCP port free now (for a server a test starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """The app under a real uvicorn server on 127.0.0.1 (in a thread, with its lifespan):
    its base URL; stopped and joined on exit."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", **UVICORN_OPTIONS
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive(), "the server thread ended"
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        assert not thread.is_alive()
