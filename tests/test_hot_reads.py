"""The rows every request reads from memory (hot.py), kept fresh across processes: what
another process changed is read again by a thread of its own, and put in place before the
TTL is over, so that no request waits for the reload."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import text

from tests.conftest import Tenant, new_tenant, statements_sent
from tokenledger.app import create_app
from tokenledger.config import Settings
from tokenledger.db import Database
from tokenledger.hot import HotReads


def elsewhere(database: Database, sql: str, **params: Any) -> None:
    """A change as another process makes it: committed, with no word to this process's
    caches (a Core statement on a connection of its own)."""
    with database.write_engine.begin() as connection:
        connection.execute(text(sql), params)


def test_a_refresh_puts_in_place_what_another_process_changed(database: Database) -> None:
    tenant = new_tenant(database, {"enforcement": "hard"})
    hot = HotReads(database, ttl=3600)
    assert hot.api_key(tenant.key) is not None
    assert set(hot.organizations({tenant.slug}, set())[0]) == {tenant.slug}
    assert [lic.status for lic in hot.licenses(tenant.org_id)] == ["active"]

    elsewhere(
        database, "UPDATE organizations SET slug = 'renamed' WHERE id = :id", id=tenant.org_id
    )
    elsewhere(
        database,
        "UPDATE licenses SET status = 'suspended' WHERE organization_id = :id",
        id=tenant.org_id,
    )
    elsewhere(
        database,
        "UPDATE api_keys SET revoked_at = :at WHERE organization_id = :id",
        at=datetime(2026, 1, 1),
        id=tenant.org_id,
    )
    # Within the TTL, memory answers as before.
    assert hot.cached_key(tenant.key) is not None
    assert set(hot.organizations({tenant.slug}, set())[0]) == {tenant.slug}
    assert [lic.status for lic in hot.licenses(tenant.org_id)] == ["active"]

    hot.refresh()

    assert hot.cached_key(tenant.key) is None
    assert hot.api_key(tenant.key) is None
    by_slug, by_id = hot.organizations({tenant.slug, "renamed"}, {tenant.org_id})
    assert set(by_slug) == {"renamed"}
    assert by_id[tenant.org_id].slug == "renamed"
    assert [lic.status for lic in hot.licenses(tenant.org_id)] == ["suspended"]


def _ask_everything(hot: HotReads, key: str, slug: str, org_id: int) -> None:
    """What an ingest request or a gateway call reads from memory."""
    hot.api_key(key)
    hot.organizations({slug}, set())
    hot.price_book()
    hot.licenses(org_id)


def _ask_for(seconds: float, database: Database, hot: HotReads, tenant: Tenant) -> list[str]:
    """Ask everything every 50 ms for `seconds`: the statements this thread sent."""
    with statements_sent(database, this_thread=True) as sent:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            _ask_everything(hot, tenant.key, tenant.slug, tenant.org_id)
            time.sleep(0.05)
    return sent


def test_past_the_ttl_requests_read_nothing_while_the_thread_refreshes(
    database: Database,
) -> None:
    tenant = new_tenant(database, {})
    revoked = new_tenant(database, {})
    ttl = 1.5
    hot = HotReads(database, ttl=ttl)
    _ask_everything(hot, tenant.key, tenant.slug, tenant.org_id)
    hot.api_key(revoked.key)

    # Without the thread, the first request past the TTL reads it all again itself.
    sent = _ask_for(ttl * 1.5, database, hot, tenant)
    assert sent, "no reload seen without the thread: this test could not fail"

    hot.start_refreshing()
    hot.start_refreshing()  # once is enough: no second thread
    assert [t.name for t in threading.enumerate()].count("hot-reads") == 1
    try:
        _ask_everything(hot, tenant.key, tenant.slug, tenant.org_id)
        hot.api_key(revoked.key)
        elsewhere(
            database,
            "UPDATE api_keys SET revoked_at = :at WHERE organization_id = :id",
            at=datetime(2026, 1, 1),
            id=revoked.org_id,
        )
        sent = _ask_for(ttl * 2.5, database, hot, tenant)
        assert sent == []
        # What the other process revoked is gone from memory: read again by the thread.
        assert hot.cached_key(revoked.key) is None
        assert hot.cached_key(tenant.key) is not None
    finally:
        hot.stop_refreshing()
    assert "hot-reads" not in [t.name for t in threading.enumerate()]


def test_the_app_refreshes_while_it_serves(settings: Settings) -> None:
    app = create_app(settings)
    with TestClient(app):
        assert "hot-reads" in [t.name for t in threading.enumerate()]
    assert "hot-reads" not in [t.name for t in threading.enumerate()]


def test_without_a_ttl_nothing_is_refreshed(database: Database) -> None:
    # cache_seconds 0: every request reads again; a thread would only spin.
    hot = HotReads(database, ttl=0)
    hot.start_refreshing()
    assert "hot-reads" not in [t.name for t in threading.enumerate()]
    hot.stop_refreshing()
