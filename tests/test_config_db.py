"""Settings, the signing key, engines and the UTC column type."""

from __future__ import annotations

import shutil
import sqlite3
import stat
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import StatementError

from tests.conftest import make_settings
from tests.factories import make_license, make_org
from tokenledger.config import Settings
from tokenledger.db import Database, sqlalchemy_url
from tokenledger.licenses.models import License
from tokenledger.organizations.models import Organization


def test_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("TOKENLEDGER_DATABASE_URL", "postgresql://u:p@db:5432/ledger")
    monkeypatch.setenv("TOKENLEDGER_SECRET_KEY", "s" * 40)
    monkeypatch.setenv("TOKENLEDGER_BILLING_TIMEZONE", "Europe/Berlin")
    monkeypatch.setenv("TOKENLEDGER_SQLITE_SYNCHRONOUS", "extra")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.database_url == "postgresql://u:p@db:5432/ledger"
    assert not settings.is_sqlite
    assert settings.sqlite_path() is None
    assert settings.timezone.key == "Europe/Berlin"
    assert settings.sqlite_synchronous == "EXTRA"
    assert settings.signing_key() == "s" * 40

    for name in ("DATABASE_URL", "SECRET_KEY", "BILLING_TIMEZONE", "SQLITE_SYNCHRONOUS"):
        monkeypatch.delenv(f"TOKENLEDGER_{name}")
    default = Settings(_env_file=None)  # type: ignore[call-arg]
    assert default.database_url == "sqlite:///./data/tokenledger.db"
    assert default.sqlite_path() == Path("data/tokenledger.db")
    assert default.billing_timezone == "UTC"


def test_bad_settings_are_refused():
    for values in (
        {"billing_timezone": "Mars/Olympus"},
        {"sqlite_synchronous": "OFF"},
        {"max_body_bytes": 10},
        {"login_max_failures": 0},
    ):
        with pytest.raises(ValidationError):
            Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_embedded_database_keeps_its_signing_key_beside_it(tmp_path):
    settings = make_settings(f"sqlite:///{tmp_path / 'data' / 'ledger.db'}", secret_key="")
    key = settings.signing_key()
    key_file = tmp_path / "data" / ".secret_key"
    assert key_file.read_text() == key
    assert len(key) >= 43
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert settings.signing_key() == key
    # Nothing else is left in the directory.
    assert sorted(p.name for p in key_file.parent.iterdir()) == [".secret_key"]


def _read_key_at_once(settings: Settings, start: threading.Barrier, keys: list[str]) -> None:
    start.wait()
    keys.append(settings.signing_key())


def test_processes_racing_for_the_signing_key_agree(tmp_path):
    """Workers starting at once all sign with one key, never with an empty one."""
    for round_number in range(20):
        path = tmp_path / str(round_number) / "ledger.db"
        settings = make_settings(f"sqlite:///{path}", secret_key="")
        start = threading.Barrier(6)
        keys: list[str] = []
        threads = [
            threading.Thread(target=_read_key_at_once, args=(settings, start, keys))
            for _ in range(6)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(set(keys)) == 1, keys
        assert keys[0]


def test_postgresql_needs_a_secret_key():
    settings = make_settings("postgresql://u@localhost/db", secret_key="")
    with pytest.raises(RuntimeError, match="TOKENLEDGER_SECRET_KEY"):
        settings.signing_key()


def test_plain_postgresql_urls_use_psycopg_3():
    assert sqlalchemy_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert sqlalchemy_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert sqlalchemy_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert sqlalchemy_url("sqlite:///x.db") == "sqlite:///x.db"


def test_times_are_stored_in_utc_and_read_back_aware(database):
    berlin = timezone(timedelta(hours=2))
    starts = datetime(2026, 6, 1, 2, 30, tzinfo=berlin)
    with database.session(write=True) as session:
        lic = make_license(session, make_org(session), valid_from=starts)
        lic_id = lic.id
    with database.session(write=False) as session:
        stored = session.get(License, lic_id)
        assert stored is not None
        assert stored.valid_from == starts
        assert stored.valid_from.tzinfo == UTC
        assert stored.valid_from.hour == 0
        # Comparisons in SQL use the same UTC instant.
        found = session.scalar(select(License.id).where(License.valid_from == starts))
        assert found == lic_id


def test_naive_times_are_refused(database):
    with database.session(write=True) as session:
        org = make_org(session)
        session.add(
            License(
                organization_id=org.id,
                valid_from=datetime(2026, 1, 1),  # naive: the point of the test
                credits_total_micro=1,
                cost_per_credit_nano=1,
            )
        )
        with pytest.raises(StatementError, match="naive datetime"):
            session.flush()
        session.rollback()


def test_sqlite_write_sessions_take_the_write_lock_at_once(sqlite_template, tmp_path):
    """Two writers queue at BEGIN instead of failing to upgrade a read lock later."""
    path = tmp_path / "lock.db"
    shutil.copy(sqlite_template, path)
    database = Database(make_settings(f"sqlite:///{path}"))
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        with database.session(write=False) as session:
            session.scalar(select(License.id))
            other.execute("BEGIN IMMEDIATE")  # a reader does not hold the write lock
            other.execute("ROLLBACK")
        with database.session(write=True) as session:
            session.scalar(select(License.id))
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")  # released at commit
        other.execute("ROLLBACK")
        with database.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        other.close()
        database.dispose()


def test_a_pooled_connection_left_inside_a_transaction_is_never_handed_out(
    sqlite_template, tmp_path
):
    """A connection that someone still holds (an abandoned stream, say) and uses after the
    pool took it back must not serve the next request from its old snapshot (SQLite: its
    writes would also fail with "database is locked"). On PostgreSQL the pool's pre-ping
    already fails loudly on such a connection."""
    path = tmp_path / "pool.db"
    shutil.copy(sqlite_template, path)
    database = Database(make_settings(f"sqlite:///{path}"))
    raw = database.engine.raw_connection()
    leaked = raw.driver_connection
    raw.close()  # back in the pool, rolled back and clean
    cursor = leaked.cursor()
    cursor.execute("BEGIN")
    cursor.execute("SELECT count(*) FROM organizations")
    cursor.fetchall()
    with database.session(write=True) as session:
        make_org(session, name="Written after the leak")
    with database.session(write=False) as session:
        handed_out = session.connection().connection.driver_connection
        names = session.scalars(select(Organization.name)).all()
    assert handed_out is not leaked
    assert names == ["Written after the leak"]
    assert database.engine.pool.checkedout() == 0
    database.dispose()
