"""Fixtures: every database test runs on a real SQLite file and a real PostgreSQL server.

Isolation: SQLite tests get a fresh copy of a database migrated once per session;
PostgreSQL tests share one database migrated once, emptied before each test.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import event as sa_event
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
from tokenledger.deps import IngestKey
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
def statements_sent(database: Database, *, this_thread: bool = False) -> Iterator[list[str]]:
    """The SQL statements sent while the block runs (an executemany is one round trip,
    counted once), on the reads' engine and on SQLite's own engine of writes; with
    this_thread, only those the calling thread sends."""
    me = threading.get_ident()
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not this_thread or threading.get_ident() == me:
            statements.append(statement)

    engines = {database.engine, database.write_engine}
    for engine in engines:
        sa_event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        for engine in engines:
            sa_event.remove(engine, "before_cursor_execute", count)


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


# Usage events, budgets, live servers and a webhook receiver (API-level helpers).


@pytest.fixture
def service_key(database: Database) -> dict[str, str]:
    with write(database) as session:
        _key, secret = create_api_key(session, "service", None, actor=None)
    return key_bearer(secret)


_counter = iter(range(1, 10**9))


def event(
    cost: str | None = "0.01",
    *,
    at: datetime | None = None,
    id: str | None = None,
    model: str = "claude-sonnet-4-5",
    **fields: Any,
) -> dict[str, Any]:
    """A usage event; with cost_usd given unless cost is None (then priced from tokens)."""
    body: dict[str, Any] = {
        "id": id or f"evt-{next(_counter)}",
        "model": model,
        "input_tokens": 1000,
        "output_tokens": 100,
    }
    if cost is not None:
        body["cost_usd"] = cost
    if at is not None:
        body["timestamp"] = at.isoformat()
    body.update(fields)
    return body


def usd_budget_license(
    now: datetime,
    *,
    days_before: int,
    days_after: int | None = None,
    credits_total: int = 0,
    token_budget_usd: int = 10,
) -> dict[str, Any]:
    """License overrides: a USD budget over the license's whole term, valid from days before."""
    license: dict[str, Any] = {
        "credits_total": Decimal(credits_total),
        "token_budget_usd": Decimal(token_budget_usd),
        "budget_period": "license",
        "valid_from": now - timedelta(days=days_before),
    }
    if days_after is not None:
        license["valid_until"] = now + timedelta(days=days_after)
    return license


def ingest(client: Any, tenant: Tenant, *events: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/api/v1/usage", json={"events": list(events)}, headers=tenant.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def budget(client: Any, tenant: Tenant) -> dict[str, Any]:
    response = client.get("/api/v1/budget", headers=tenant.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def usd(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


@contextmanager
def serve(settings: Settings) -> Iterator[str]:
    """A real uvicorn server with the app (on the real clock) on 127.0.0.1."""
    with serving(create_app(settings)) as url:
        yield url


@pytest.fixture
def live_server(settings: Settings) -> Iterator[str]:
    with serve(settings) as url:
        yield url


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1: records every request, answers with `statuses`."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(length)
            state.requests.append(Received(self.path, dict(self.headers.items()), body))
            status = state.statuses.pop(0) if state.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/tokenledger"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as client:
        yield client


def own_client(app: Any) -> TestClient:
    """A TestClient without lifespan, for one thread of a parallel test."""
    return TestClient(app)


# Empty databases, ingest keys and a probe route for the key rules.

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
