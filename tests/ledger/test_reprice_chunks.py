"""Repricing in chunks: each chunk its own short transaction, the run resumable after a
crash (kill -9 of `tokenledger reprice`) without moving any rollup twice.

Hand-worked figures: claude-imaginary-9 has no bundled price; the override below prices
1000 input and 100 output tokens at 1000 * $10/MTok + 100 * $20/MTok = $0.012 an event
(12,000,000 nano-USD), 1.2 credits at the license's $0.01 per credit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.conftest import Tenant, make_settings
from tests.ledger.conftest import (
    LICENSE,
    LONG_BACKFILL_DAYS,
    credits_used_micro,
    monthly_rows,
    ok,
    usage_event,
)
from tokenledger.app import create_app
from tokenledger.audit.models import AuditEntry
from tokenledger.cli import main
from tokenledger.config import get_settings
from tokenledger.db import Database
from tokenledger.ledger.reconcile import reconcile
from tokenledger.usage.models import UsageEvent

IMAGINARY = "/api/pricing/overrides/anthropic/claude-imaginary-9"
PRICE = {"input": "10", "output": "20", "valid_from": "2026-01-01T00:00:00Z"}
EVENT_NANO = 12_000_000
EVENT_CREDITS_MICRO = 1_200_000


@pytest.fixture
def chunked_client(database_url: str) -> Iterator[TestClient]:
    """The app with repricing chunks of 3 events."""
    settings = make_settings(
        database_url, backfill_max_age_days=LONG_BACKFILL_DAYS, reprice_chunk_events=3
    )
    with TestClient(create_app(settings)) as client:
        yield client


def imaginary(n: int, prefix: str = "i") -> list[dict[str, Any]]:
    return [
        usage_event(
            f"{prefix}{i}", f"2026-06-{1 + i % 28:02d}T12:00:00Z", model="claude-imaginary-9"
        )
        for i in range(n)
    ]


def drift(database: Database) -> list[str]:
    with database.session(write=True) as session:
        return reconcile(session, fix=False)


def audit_actions(database: Database) -> list[tuple[str, dict[str, Any] | None]]:
    with database.session(write=False) as session:
        return [
            (entry.action, entry.after)
            for entry in session.scalars(
                select(AuditEntry)
                .where(AuditEntry.action.like("pricing.reprice%"))
                .order_by(AuditEntry.id)
            )
        ]


def priced_events(database: Database) -> int:
    with database.session(write=False) as session:
        return (
            session.scalar(
                select(func.count())
                .select_from(UsageEvent)
                .where(UsageEvent.cost_nano.is_not(None))
            )
            or 0
        )


def test_a_repricing_of_several_chunks_moves_every_rollup_once(
    chunked_client: TestClient,
    database: Database,
    make_tenant: Callable[..., Tenant],
    admin_headers: dict[str, str],
) -> None:
    tenants = [make_tenant(LICENSE) for _ in range(2)]
    for tenant in tenants:
        ok(chunked_client, tenant.headers, *imaginary(5))  # 10 events: 4 chunks of 3
    response = chunked_client.put(IMAGINARY, json=PRICE, headers=admin_headers)
    assert response.status_code == 200, response.text

    done = chunked_client.post(
        "/api/pricing/reprice", json={"unpriced": True}, headers=admin_headers
    )
    assert done.status_code == 200, done.text
    body = done.json()
    assert (body["examined"], body["changed"]) == (10, 10)
    assert body["after"] == {"cost_usd": "0.12", "credits": "12.0", "unpriced_events": 0}
    assert [org["events"] for org in body["organizations"]] == [5, 5]
    for tenant in tenants:
        june = monthly_rows(database, tenant.org_id)["2026-06"]
        assert (june["cost_nano"], june["unpriced_events"]) == (5 * EVENT_NANO, 0)
        assert credits_used_micro(database, tenant.license_id) == 5 * EVENT_CREDITS_MICRO
    assert drift(database) == []
    # One start entry, one with the totals (the shape of a one-transaction run).
    actions = audit_actions(database)
    assert [action for action, _ in actions] == ["pricing.reprice.start", "pricing.reprice"]
    assert actions[1][1] is not None
    assert (actions[1][1]["events"], actions[1][1]["cost_usd"]) == (10, "0.12")

    again = chunked_client.post(
        "/api/pricing/reprice", json={"unpriced": True}, headers=admin_headers
    )
    assert (again.json()["examined"], again.json()["changed"]) == (0, 0)
    assert len(audit_actions(database)) == 2


def test_a_dry_run_in_chunks_changes_nothing(
    chunked_client: TestClient,
    database: Database,
    make_tenant: Callable[..., Tenant],
    admin_headers: dict[str, str],
) -> None:
    tenant = make_tenant(LICENSE)
    ok(chunked_client, tenant.headers, *imaginary(7))
    assert chunked_client.put(IMAGINARY, json=PRICE, headers=admin_headers).status_code == 200
    dry = chunked_client.post(
        "/api/pricing/reprice", json={"unpriced": True, "dry_run": True}, headers=admin_headers
    )
    assert dry.status_code == 200, dry.text
    assert (dry.json()["examined"], dry.json()["changed"]) == (7, 7)
    assert dry.json()["after"]["cost_usd"] == "0.084"
    assert priced_events(database) == 0
    assert audit_actions(database) == []


def _cli_env(database_url: str, chunk: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENLEDGER_")}
    env["TOKENLEDGER_DATABASE_URL"] = database_url
    env["TOKENLEDGER_REPRICE_CHUNK_EVENTS"] = str(chunk)
    return env


@pytest.mark.slow
def test_a_repricing_killed_midway_is_finished_by_running_it_again(
    database_url: str,
    client: TestClient,
    database: Database,
    make_tenant: Callable[..., Tenant],
    admin_headers: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    total = 600
    tenants = [make_tenant(LICENSE) for _ in range(3)]
    for number, tenant in enumerate(tenants):
        ok(client, tenant.headers, *imaginary(total // 3, prefix=f"t{number}-"))
    assert client.put(IMAGINARY, json=PRICE, headers=admin_headers).status_code == 200
    command = [sys.executable, "-m", "tokenledger.cli", "reprice", "--unpriced"]

    run = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=_cli_env(database_url, 5),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while priced_events(database) == 0:
        assert run.poll() is None, run.stderr.read() if run.stderr else ""
        assert time.monotonic() < deadline, "the repricing never committed a chunk"
        time.sleep(0.01)
    os.kill(run.pid, signal.SIGKILL)
    run.wait(timeout=30)
    assert run.stderr is not None
    run.stderr.close()
    cut_at = priced_events(database)
    assert 0 < cut_at < total, f"the kill came after the whole run ({cut_at} of {total})"
    # Every committed chunk is whole: rollups and balances equal the events.
    assert drift(database) == []

    # The same command again (in this process: a second start of Python costs seconds).
    monkeypatch.chdir(tmp_path)
    for name, value in _cli_env(database_url, 500).items():
        if name.startswith("TOKENLEDGER_"):
            monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        assert main(["reprice", "--unpriced"]) == 0
    finally:
        get_settings.cache_clear()
    assert capsys.readouterr().out.splitlines()[0] == (
        f"{total - cut_at} of {total - cut_at} events of unpriced repriced"
    )
    # As one clean run would leave it: every event priced once, every rollup moved once.
    assert priced_events(database) == total
    for tenant in tenants:
        june = monthly_rows(database, tenant.org_id)["2026-06"]
        assert (june["cost_nano"], june["event_count"], june["unpriced_events"]) == (
            total // 3 * EVENT_NANO,
            total // 3,
            0,
        )
        assert credits_used_micro(database, tenant.license_id) == total // 3 * EVENT_CREDITS_MICRO
    assert drift(database) == []
    # The cut run's start entry stands without totals; the second run's totals are the rest.
    actions = audit_actions(database)
    assert [action for action, _ in actions] == [
        "pricing.reprice.start",
        "pricing.reprice.start",
        "pricing.reprice",
    ]
    assert actions[2][1] is not None
    assert actions[2][1]["events"] == total - cut_at
