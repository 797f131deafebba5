"""`tokenledger reconcile [--fix]`: rollups and balances recomputed from the events."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy import event as sa_event
from sqlalchemy.pool import NullPool

from tests.conftest import Tenant, write
from tests.ledger.conftest import cli, ok, post, snapshot
from tests.ledger.conftest import usage_event as usage
from tokenledger.db import Database
from tokenledger.ledger.reconcile import reconcile
from tokenledger.licenses import service as licenses


def populate(client: TestClient, database: Database, tenant: Tenant) -> None:
    ok(
        client,
        tenant.headers,
        usage("a", "2026-05-31T23:00:00Z"),
        usage("b", "2026-06-01T00:00:00Z", cost_usd="0.5"),
        usage("c", "2026-06-02T00:00:00Z", model="unknown-model"),
        usage("d", "2025-12-01T00:00:00Z"),  # before the license
    )
    response = client.put(
        "/api/v1/refreshes/run-1",
        json={"status": "completed", "finished_at": "2026-06-03T00:00:00Z"},
        headers=tenant.headers,
    )
    assert response.status_code == 200, response.text
    with write(database) as session:
        lic = licenses.get(session, tenant.license_id)
        licenses.adjust_credits_used(session, lic, lic.credits_used_micro + 5_000_000, "t", "")


def test_reconcile_reports_drift_and_fixes_it(
    database_url: str,
    client: TestClient,
    database: Database,
    make_tenant: Callable[..., Tenant],
    tmp_path: Path,
) -> None:
    tenant = make_tenant({"valid_from": "2026-01-01T00:00:00Z", "cost_per_credit": "0.01"})
    populate(client, database, tenant)
    done = cli(database_url, tmp_path, "reconcile")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no drift" in done.stdout
    clean = snapshot(database)

    org, lic = tenant.org_id, tenant.license_id
    with database.engine.begin() as connection:
        for statement in (
            "UPDATE token_usage_monthly SET cost_nano = cost_nano + 1 "
            f"WHERE organization_id = {org} AND year_month = '2026-06'",
            "UPDATE token_usage_monthly SET refresh_count = 7 "
            f"WHERE organization_id = {org} AND year_month = '2026-06'",
            "DELETE FROM token_usage_monthly "
            f"WHERE organization_id = {org} AND year_month = '2026-05'",
            f"UPDATE licenses SET credits_used_micro = 0 WHERE id = {lic}",
            f"UPDATE license_usage SET credits_micro = credits_micro * 2 WHERE license_id = {lic}",
            f"UPDATE usage_daily SET input_tokens = 1 WHERE organization_id = {org}",
            "UPDATE usage_utc_daily SET cache_write_1h_tokens = cache_write_1h_tokens + 5 "
            f"WHERE organization_id = {org}",
        ):
            connection.execute(text(statement))
    tampered = snapshot(database)
    assert tampered != clean

    done = cli(database_url, tmp_path, "reconcile")
    assert done.returncode == 1, done.stdout + done.stderr
    report = done.stdout
    assert f"token_usage_monthly ({org}, '2026-06'): cost_nano is" in report
    assert f"token_usage_monthly ({org}, '2026-06'): refresh_count is 7, events say 1" in report
    assert f"token_usage_monthly ({org}, '2026-05'): input_tokens is 0, events say 1000" in report
    assert f"license {lic}: credits_used_micro is 0, events and adjustments say" in report
    assert "license_usage" in report
    assert "usage_daily" in report
    assert "usage_utc_daily" in report
    assert "cache_write_1h_tokens is 5, events say 0" in report
    assert snapshot(database) == tampered  # reporting alone changes nothing

    done = cli(database_url, tmp_path, "reconcile", "--fix")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "fixed" in done.stdout
    assert snapshot(database) == clean
    with database.session(write=False) as session:
        assert reconcile(session, fix=False) == []


def test_reconcile_is_consistent_while_usage_arrives(
    database_url: str,
    client: TestClient,
    database: Database,
    make_tenant: Callable[..., Tenant],
) -> None:
    """A batch committed while reconcile runs is neither reported as drift nor overwritten.

    The batch is sent when reconcile, having summed the events, is about to read the
    rollups; reconcile gives it a moment to commit before it goes on. On PostgreSQL the
    server itself shows that the batch was blocked: a backend of this database waits on a
    lock (pg_stat_activity) while reconcile holds its table locks.
    """
    tenant = make_tenant({"valid_from": "2026-01-01T00:00:00Z", "cost_per_credit": "0.01"})
    populate(client, database, tenant)
    sent = threading.Event()
    statuses: list[int] = []

    def send() -> None:
        statuses.append(
            post(client, tenant.headers, usage("late", "2026-06-05T00:00:00Z")).status_code
        )

    thread = threading.Thread(target=send)
    waited: list[bool] = []
    lock_waits: list[int] = []
    observer = (
        create_engine(database_url, poolclass=NullPool)
        if database.engine.dialect.name == "postgresql"
        else None
    )

    def lock_waiters() -> int:
        assert observer is not None
        with observer.connect() as connection:
            return int(
                connection.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                ).scalar_one()
            )

    def before_execute(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not sent.is_set() and "FROM token_usage_monthly" in statement:
            sent.set()
            thread.start()
            if observer is not None:
                deadline = time.monotonic() + 20
                while not lock_waits and time.monotonic() < deadline:
                    if waiting := lock_waiters():
                        lock_waits.append(waiting)
                    else:
                        time.sleep(0.02)
            thread.join(timeout=1.5)
            # The batch waits for reconcile: SQLite's one writer, PostgreSQL's table locks.
            waited.append(thread.is_alive())

    with write(database) as session:
        sa_event.listen(database.write_engine, "before_cursor_execute", before_execute)
        try:
            drift = reconcile(session, fix=True)
        finally:
            sa_event.remove(database.write_engine, "before_cursor_execute", before_execute)
    thread.join(timeout=30)
    if observer is not None:
        observer.dispose()
        assert len(lock_waits) == 1, "the late batch never waited on reconcile's locks"
        assert lock_waits[0] >= 1
    assert waited == [True]
    assert statuses == [200]
    assert drift == []
    with database.session(write=False) as session:
        assert reconcile(session, fix=False) == []
