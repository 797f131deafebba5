"""Fixtures of the ledger tests: ingest keys, tenants, and readers of what the database holds.

Fixed dates are used throughout (costs and months are worked out by hand for them), so
the ledger's settings accept back-dated events of any age; the age limit has its own test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from tests.conftest import FixedClock, key_bearer, make_settings, write
from tokenledger.app import create_app
from tokenledger.auth.service import create_api_key
from tokenledger.config import Settings
from tokenledger.db import Database
from tokenledger.licenses.models import License
from tokenledger.usage.models import (
    LicenseUsage,
    TokenUsageMonthly,
    UsageDaily,
    UsageEvent,
    UsageUtcDaily,
)

AT = "2026-06-15T12:00:00Z"
LICENSE = {"valid_from": "2026-01-01T00:00:00Z", "cost_per_credit": "0.01"}
# Old enough for every fixed date below, whatever day the suite runs on.
LONG_BACKFILL_DAYS = 100 * 365
MONTHLY_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_tokens",
    "cache_read_tokens",
    "cost_nano",
    "api_calls",
    "refresh_count",
    "event_count",
    "unpriced_events",
)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url, backfill_max_age_days=LONG_BACKFILL_DAYS)


@pytest.fixture
def berlin_client(database_url: str, clock: FixedClock) -> Iterator[TestClient]:
    """A client of an app whose billing months are Europe/Berlin's, and whose now is the
    clock fixture's (NOW unless the test sets it)."""
    settings = make_settings(
        database_url, billing_timezone="Europe/Berlin", backfill_max_age_days=LONG_BACKFILL_DAYS
    )
    with TestClient(create_app(settings, clock=clock)) as client:
        yield client


@pytest.fixture
def service_headers(database: Database) -> dict[str, str]:
    """A service key: writes usage of any organization, which each event names."""
    with write(database) as session:
        _key, secret = create_api_key(session, "ledger service", None, actor=None)
    return key_bearer(secret)


def post(client: TestClient, headers: dict[str, str], *events: dict[str, Any]) -> Any:
    return client.post("/api/v1/usage", json={"events": list(events)}, headers=headers)


def ok(client: TestClient, headers: dict[str, str], *events: dict[str, Any]) -> dict[str, Any]:
    response = post(client, headers, *events)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def bare_event(id: str, at: str = AT, **fields: Any) -> dict[str, Any]:
    """An event of claude-sonnet-4-5 with no tokens but what the fields give."""
    body: dict[str, Any] = {"id": id, "timestamp": at, "model": "claude-sonnet-4-5"}
    body.update(fields)
    return body


def usage_event(id: str, at: str = AT, **fields: Any) -> dict[str, Any]:
    """An event of 1000 input and 100 output tokens, unless the fields say otherwise.

    claude-sonnet-4-5: 1000 * $3/MTok + 100 * $15/MTok = 0.003 + 0.0015 = $0.0045
    """
    body = bare_event(id, at, input_tokens=1000, output_tokens=100)
    body.update(fields)
    return body


def cli(database_url: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed command in a subprocess, configured only by TOKENLEDGER_DATABASE_URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENLEDGER_")}
    env["TOKENLEDGER_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "tokenledger.cli", *args],
        cwd=cwd,  # away from any .env of the working tree
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def rfc3339(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


# --- what the database holds -----------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Everything a batch may change, to prove that a refused batch changed nothing."""

    events: int
    monthly: tuple[tuple[Any, ...], ...]
    daily: tuple[tuple[Any, ...], ...]
    utc_daily: tuple[tuple[Any, ...], ...]
    license_usage: tuple[tuple[Any, ...], ...]
    credits_used: tuple[tuple[int, int], ...]


def snapshot(database: Database) -> Snapshot:
    with database.session(write=False) as session:
        return Snapshot(
            events=session.scalar(select(func.count()).select_from(UsageEvent)) or 0,
            monthly=tuple(
                tuple(row)
                for row in session.execute(
                    select(TokenUsageMonthly.__table__).order_by(
                        TokenUsageMonthly.organization_id, TokenUsageMonthly.year_month
                    )
                )
            ),
            daily=tuple(
                tuple(row)
                for row in session.execute(
                    select(UsageDaily.__table__).order_by(
                        UsageDaily.organization_id,
                        UsageDaily.day,
                        UsageDaily.provider,
                        UsageDaily.model,
                    )
                )
            ),
            utc_daily=tuple(
                tuple(row)
                for row in session.execute(
                    select(UsageUtcDaily.__table__).order_by(
                        UsageUtcDaily.organization_id,
                        UsageUtcDaily.day,
                        UsageUtcDaily.provider,
                        UsageUtcDaily.model,
                    )
                )
            ),
            license_usage=tuple(
                tuple(row)
                for row in session.execute(
                    select(LicenseUsage.__table__).order_by(
                        LicenseUsage.license_id, LicenseUsage.year_month
                    )
                )
            ),
            credits_used=tuple(
                (row.id, row.credits_used_micro)
                for row in session.execute(
                    select(License.id, License.credits_used_micro).order_by(License.id)
                )
            ),
        )


def monthly_rows(database: Database, org_id: int) -> dict[str, dict[str, int]]:
    """token_usage_monthly of one organization: {year_month: {field: value}}."""
    with database.session(write=False) as session:
        rows = session.scalars(
            select(TokenUsageMonthly).where(TokenUsageMonthly.organization_id == org_id)
        ).all()
        return {
            row.year_month: {name: getattr(row, name) for name in MONTHLY_FIELDS} for row in rows
        }


def stored_events(database: Database, org_id: int | None = None) -> dict[str, UsageEvent]:
    """Stored events by external id."""
    with database.session(write=False) as session:
        query = select(UsageEvent)
        if org_id is not None:
            query = query.where(UsageEvent.organization_id == org_id)
        return {row.external_id: row for row in session.scalars(query).all()}


def credits_used_micro(database: Database, license_id: int) -> int:
    with database.session(write=False) as session:
        value = session.scalar(select(License.credits_used_micro).where(License.id == license_id))
        assert value is not None
        return value


def wait_until_blocked(database: Database, seconds: float = 10) -> None:
    """Until another transaction waits for a lock (PostgreSQL); SQLite's writer just queues."""
    if database.dialect_name != "postgresql":
        time.sleep(0.3)
        return
    deadline = time.monotonic() + seconds
    with database.engine.connect() as connection:
        while time.monotonic() < deadline:
            waiting = connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
            ).scalar()
            if waiting:
                return
            connection.rollback()  # pg_stat_activity is a snapshot per transaction
            time.sleep(0.02)
    raise AssertionError("the second batch never waited for the first")
