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
from sqlalchemy import bindparam, literal, select
from sqlalchemy.exc import StatementError

from tests.conftest import make_settings, statements_sent
from tests.factories import make_license, make_org
from tokenledger import db as db_module
from tokenledger.config import Settings
from tokenledger.db import Database, driver_read, read_rows, sqlalchemy_url
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


# A module constant, as driver_read wants it: a datetime parameter (converted to what the
# column stores) and a value written out ('active': a partial index's condition names it).
_VALID_FROM = driver_read(
    select(License.id, License.credits_total_micro)
    .where(
        License.valid_from == bindparam("at"),
        License.status == literal("active", literal_execute=True),
    )
    .order_by(License.id)
)


def test_a_single_read_gives_what_a_session_reads_and_sees_each_commit(database):
    """A driver_read statement (straight to SQLite's driver) reads the rows a session
    reads, with its parameters converted as SQLAlchemy converts them; and each read sees
    what was committed before it (its connection goes back to the pool, in no transaction)."""
    starts = datetime(2026, 3, 1, 12, tzinfo=UTC)
    at = {"at": starts.astimezone(timezone(timedelta(hours=2)))}  # the same instant
    with database.session(write=True) as session:
        first = make_license(session, make_org(session), valid_from=starts, credits_total=7).id
    with database.single_read() as reader:
        assert [tuple(row) for row in reader.execute(_VALID_FROM, at)] == [(first, 7_000_000)]
    with database.single_read() as reader:
        later = {"at": starts + timedelta(microseconds=1)}
        assert reader.execute(_VALID_FROM, later) == []
    with database.session(write=True) as session:
        second = make_license(session, make_org(session), valid_from=starts, credits_total=3).id
    with database.single_read() as reader:
        rows = [tuple(row) for row in reader.execute(_VALID_FROM, at)]
    with database.session(write=False) as session:
        expected = [tuple(row) for row in session.execute(_VALID_FROM, at)]
    assert rows == expected == [(first, 7_000_000), (second, 3_000_000)]
    assert database.engine.pool.checkedout() == 0


# A list parameter (written out per call), a datetime parameter beside it and columns that
# need converting (the stored text to an aware datetime, in both directions).
_BY_IDS = driver_read(
    select(License.id, License.valid_from, License.valid_until)
    .where(License.id.in_(bindparam("ids", expanding=True)), License.valid_from < bindparam("at"))
    .order_by(License.id)
)


def test_a_driver_read_takes_lists_and_converts_columns_as_sqlalchemy_does(database):
    starts = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
    with database.session(write=True) as session:
        ids = [
            make_license(session, make_org(session), starts, valid_from=starts).id,
            make_license(
                session,
                make_org(session),
                starts,
                valid_from=starts,
                valid_until=starts + timedelta(days=3),
            ).id,
            make_license(
                session, make_org(session), starts, valid_from=starts + timedelta(days=9)
            ).id,
        ]
    at = datetime(2026, 3, 5, tzinfo=timezone(timedelta(hours=-5)))
    for wanted in ([ids[0]], ids, [ids[2], ids[1], 10**9]):
        with database.session(write=False) as session, statements_sent(database) as sent:
            rows = read_rows(session, _BY_IDS, {"ids": wanted, "at": at})
            # On SQLite straight to the driver: only the transaction's BEGIN went through
            # SQLAlchemy's execution.
            reads = [statement for statement in sent if "licenses" in statement]
            assert len(reads) == (0 if database.dialect_name == "sqlite" else 1)
            expected = [
                tuple(row)
                for row in session.connection().execute(_BY_IDS, {"ids": wanted, "at": at})
            ]
        assert rows == expected
    assert rows == [(ids[1], starts, starts + timedelta(days=3))]
    assert rows[0][1].tzinfo is UTC


def test_driver_reads_are_prepared_once(sqlite_template, tmp_path):
    """Every driver_read statement (the budget check's among them) is prepared once and
    run again as it is. SQLite prepares a statement anew at each execution when a bound
    value is compared with a column named in a partial index's condition (the status of
    reservations); SQLite's authorizer is asked at each preparation, so it counts them."""
    import tokenledger.budgets.service  # noqa: F401  (registers the budget check's reads)

    path = tmp_path / "prepare.db"
    shutil.copy(sqlite_template, path)
    reads = list(db_module._DRIVER_READS.values())
    assert any("reservations" in str(read.compiled) for read in reads)
    connection = sqlite3.connect(path, isolation_level=None)
    prepared: list[str] = []

    def authorizer(*_args: object) -> int:
        prepared.append("asked")
        return sqlite3.SQLITE_OK

    connection.set_authorizer(authorizer)
    try:
        # A list parameter of one item (the SQL is written out for each length); reads
        # whose SQL is the same on SQLite (one with FOR UPDATE, one without) run once.
        statements = dict(
            read.bound(
                {
                    name: [None] if bind.expanding else None
                    for name, bind in read.compiled.binds.items()
                }
            )
            for read in reads
        )
        for sql, values in statements.items():
            connection.execute(sql, values).fetchall()
            assert prepared, "the authorizer is asked when a statement is prepared"
            prepared.clear()
            connection.execute(sql, values).fetchall()
            assert prepared == [], sql
    finally:
        connection.close()
