"""Engine, sessions and column types shared by every domain.

SQLite: WAL so that readers go on while one writer writes, foreign keys on, and one
writer per process: every write transaction runs on the one write connection, under
the process's writer lock, so write transactions queue in the process instead of
sleeping in SQLite's busy handler; reads use a pool of their own. Write transactions
still open with BEGIN IMMEDIATE (and a busy timeout) against writers of other processes
(the command line, a second server).
PostgreSQL: READ COMMITTED, with atomic increments and row locks where rows are shared;
writers run concurrently, so every write transaction takes its locks in ONE order:

1. organizations, in id order (FOR NO KEY UPDATE, organizations.service.lock): ingestion,
   repricing, budget changes, holds and refreshes of an organization take turns here;
2. licenses, in id order (FOR UPDATE);
3. the rows those organizations and licenses own: events (a repricing locks only the
   event rows, never the price rows it reads), refreshes, reservations, credit
   adjustments, alerts, and rollups in key order;
4. usage_prices, shared and append-only: new rows inserted in fingerprint order in one
   statement, never updated, never locked otherwise;
5. api_keys (last_used_at) last, in id order, or in a short transaction of their own.

reconcile's table locks follow the same order. Price overrides of a model are one more
domain with its own lock (pricing/overrides.py), taken with nothing else held.
A transaction that loses a deadlock or a serialization conflict all the same (SQLSTATE
40P01 / 40001) is run again (`retrying`, `Database.run_write`, and for requests
middleware.RetryConflicts): a few times, after a random pause, never answered as a 500.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any, TypeVar

import psycopg
from sqlalchemy import (
    BigInteger,
    Connection,
    DateTime,
    Engine,
    Executable,
    MetaData,
    Select,
    TextualSelect,
    create_engine,
    event,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import QueuePool
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.types import TypeDecorator

from tokenledger.config import Settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only autoincrements an INTEGER PRIMARY KEY; BIGINT elsewhere.
BigId = BigInteger().with_variant(sqlite.INTEGER(), "sqlite")
# The largest id of an Integer key: INTEGER is 32 bits on PostgreSQL, and a larger number
# given to the database fails there (and past 64 bits on SQLite) instead of matching nothing.
MAX_ROW_ID = 2**31 - 1


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """An aware datetime, stored as naive UTC on every backend, returned aware in UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(value: datetime) -> int:
    """Microseconds since 1970-01-01 UTC, exactly (integer arithmetic, no float)."""
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


class Instant(TypeDecorator[datetime]):
    """An aware instant of the events table: on SQLite an integer of microseconds since
    1970 (8 bytes instead of 26 characters, in the row and in its index), elsewhere a
    timestamp as UTCDateTime stores it. Returned aware in UTC."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        if dialect.name == "sqlite":
            return to_micros(value)
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return from_micros(int(value))
        result: datetime = value.replace(tzinfo=UTC)
        return result


def utcnow() -> datetime:
    return datetime.now(UTC)


# What the app reads "now" from: utcnow, or a fixed instant in tests (create_app(clock=...)).
Clock = Callable[[], datetime]


def sqlalchemy_url(url: str) -> str:
    """The driver-qualified URL: plain postgresql:// means psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(settings: Settings, *, pool_size: int = 8) -> Engine:
    url = sqlalchemy_url(settings.database_url)
    if url.startswith("sqlite"):
        path = settings.sqlite_path()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": WRITER_TIMEOUT},
            poolclass=QueuePool,
            pool_size=pool_size,
            max_overflow=0 if pool_size == 1 else 10,
        )
        _configure_sqlite(engine, settings.sqlite_synchronous)
    else:
        # A connect timeout, so that /readyz answers 503 instead of hanging on a lost host.
        engine = create_engine(
            url,
            pool_size=10,
            max_overflow=10,
            pool_pre_ping=True,
            connect_args={"connect_timeout": 10},
        )
    _refuse_connections_in_a_transaction(engine)
    return engine


def _in_transaction(dbapi_connection: Any) -> bool:
    if isinstance(dbapi_connection, sqlite3.Connection):
        return dbapi_connection.in_transaction
    status = dbapi_connection.info.transaction_status
    return bool(status != psycopg.pq.TransactionStatus.IDLE)


def _refuse_connections_in_a_transaction(engine: Engine) -> None:
    """No checkout ever gets a connection still inside a transaction.

    The pool rolls back every connection it takes back (reset on return); should one
    come back inside a transaction all the same, it would serve an old snapshot, and on
    SQLite keep a lock. It is discarded instead, and the pool opens a fresh one.
    """

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if _in_transaction(dbapi_connection):
            raise DisconnectionError("pooled connection was inside a transaction")


def _configure_sqlite(engine: Engine, synchronous: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from pysqlite so that we can emit BEGIN ourselves.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        options = connection.get_execution_options()
        if options.get(SINGLE_STATEMENT, False):
            return  # one statement is its own transaction: one snapshot
        connection.exec_driver_sql("BEGIN IMMEDIATE" if options.get("tl_write", False) else "BEGIN")


# Execution option of a connection that runs one read statement only (reads_once): on
# SQLite no BEGIN is sent, since a lone statement reads one snapshot anyway.
SINGLE_STATEMENT = "tl_single_statement"


class WriterBusy(RuntimeError):
    """The process's writer was held longer than a write may wait (as SQLite's timeout)."""


# As long as SQLite's busy timeout: what a writer waits for the lock before it gives up.
WRITER_TIMEOUT = 30


# SQLSTATEs of a transaction PostgreSQL rolled back to break a deadlock or a serialization
# conflict: the same transaction run again is expected to succeed.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})
RETRY_ATTEMPTS = 6
_RETRY_PAUSE = 0.02  # seconds: the first pause is up to this, doubled after each loss

T = TypeVar("T")


def is_retryable(exc: BaseException) -> bool:
    """A deadlock or serialization failure (SQLSTATE 40P01 / 40001), however wrapped."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DBAPIError) and current.orig is not None:
            current = current.orig
            continue
        if getattr(current, "sqlstate", None) in RETRYABLE_SQLSTATES:
            return True
        current = current.__cause__ or current.__context__
    return False


def retry_pause(attempt: int) -> float:
    """Seconds to wait before attempt `attempt` + 1: random, so that the losers part."""
    return random.uniform(0, _RETRY_PAUSE * 2**attempt)


def retrying(work: Callable[[], T], *, attempts: int = RETRY_ATTEMPTS) -> T:
    """work(), run again (bounded, with jitter) while it loses a deadlock or conflict.

    `work` must be a whole transaction: it opens, commits or rolls back its own session.
    """
    for attempt in range(attempts):
        try:
            return work()
        except Exception as exc:
            if attempt + 1 >= attempts or not is_retryable(exc):
                raise
        time.sleep(retry_pause(attempt))
    raise AssertionError("unreachable")


# What a committed write changed, by table name: caches of those tables are dropped.
ChangeListener = Callable[[frozenset[str]], None]
_listeners: dict[str, weakref.WeakSet[Any]] = {}
_listeners_lock = threading.Lock()


class Database:
    """The engine and the two session factories: reads (a pool), and writes (one writer).

    On SQLite the writer is one connection behind a lock, so that the process has one
    writer; on PostgreSQL write sessions come from the pool and run concurrently.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = make_engine(settings)
        self.dialect_name = self.engine.dialect.name
        self.url = settings.database_url
        if self.dialect_name == "sqlite":
            self._write_engine: Engine | None = make_engine(settings, pool_size=1)
            write_bind = self._write_engine.execution_options(tl_write=True)
            self._writer: threading.Lock | None = threading.Lock()
        else:
            self._write_engine = None
            write_bind = self.engine.execution_options(tl_write=True)
            self._writer = None
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(write_bind, expire_on_commit=False)
        self.caches: list[ChangeListener] = []
        with _listeners_lock:
            _listeners.setdefault(self.url, weakref.WeakSet()).add(self)

    @contextmanager
    def session(self, *, write: bool) -> Iterator[Session]:
        """One unit of work: committed when the block ends, rolled back on any error.

        A write session on SQLite first waits for the process's writer, as long as SQLite
        would wait for a lock (WRITER_TIMEOUT), then fails with WriterBusy.
        """
        if not write:
            with self._read() as session:
                yield from self._unit_of_work(session)
            return
        if self._writer is None:
            with self._write() as session:
                yield from self._unit_of_work(session)
            return
        # Acquired and released by whichever threads enter and leave the block (a request's
        # session dependency may leave it in another pool thread): a plain Lock allows that.
        if not self._writer.acquire(timeout=WRITER_TIMEOUT):
            raise WriterBusy(f"the database writer stayed busy for {WRITER_TIMEOUT} s")
        try:
            with self._write() as session:
                yield from self._unit_of_work(session)
        finally:
            self._writer.release()

    def run_write(self, work: Callable[[Session], T]) -> T:
        """work(session) in a write transaction of its own, committed; run again in a new
        one when it loses a deadlock or serialization conflict (retrying)."""

        def once() -> T:
            with self.session(write=True) as session:
                return work(session)

        return retrying(once)

    def _unit_of_work(self, session: Session) -> Iterator[Session]:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        changed = session.info.pop(CHANGED_TABLES, None)
        if changed:
            notify_changed(self.url, frozenset(changed))

    @contextmanager
    def single_read(self) -> Iterator[SingleRead]:
        """A reader of ONE read statement from the read pool: on SQLite it is sent without
        a BEGIN (a lone statement reads one snapshot), a round trip less, and a statement
        made a driver_read goes straight to the driver."""
        reader = SingleRead(self.engine)
        try:
            yield reader
        finally:
            reader.close()

    @property
    def write_engine(self) -> Engine:
        """The engine of write sessions (SQLite: its own, with the one write connection)."""
        return self._write_engine if self._write_engine is not None else self.engine

    def dispose(self) -> None:
        self.engine.dispose()
        if self._write_engine is not None:
            self._write_engine.dispose()


# Read statements sent to SQLite's driver by SingleRead, by identity: the registry keeps
# each statement alive, so that no other object takes its id.
_DRIVER_READS: dict[int, DriverRead] = {}
_SQLITE = sqlite.dialect()


class DriverRead:
    """A read statement built once (a module constant), compiled for SQLite's driver: its
    SQL, its parameters in order and their converters (a datetime to SQLite's text), and
    the converters of the columns that need one (SQLite's text to an aware datetime).

    A list parameter (`bindparam(..., expanding=True)`, an IN list) is written out for the
    list each call gives, as SQLAlchemy does on every execution of such a statement."""

    def __init__(self, statement: Select[Any] | TextualSelect) -> None:
        self.statement = statement
        self.compiled = statement.compile(dialect=_SQLITE)
        binds = self.compiled.binds
        self.expanding = any(bind.expanding for bind in binds.values())
        # Converters of the parameters by name (an expanded list's items share its own).
        self.converters: dict[str, Callable[[Any], Any]] = {}
        for name, bind in binds.items():
            convert = bind.type.dialect_impl(_SQLITE).bind_processor(_SQLITE)
            if convert is not None:
                self.converters[name] = convert
        self.sql = ""
        self.names: tuple[str, ...] = ()
        if not self.expanding:
            # Values written out (literal(..., literal_execute=True)) rendered into the SQL.
            expanded = self.compiled.construct_expanded_state(
                {name: None for name, bind in binds.items() if bind.required}
            )
            self.sql = expanded.statement
            self.names = tuple(expanded.positiontup or ())
        self.column_converters: tuple[tuple[int, Callable[[Any], Any]], ...] = tuple(
            (position, convert)
            for position, column in enumerate(statement.selected_columns)
            if (convert := column.type.dialect_impl(_SQLITE).result_processor(_SQLITE, None))
            is not None
        )

    def bound(self, params: Mapping[str, Any] | None) -> tuple[str, list[Any]]:
        """The SQL and its positional values, each converted for the driver."""
        if self.expanding:
            expanded = self.compiled.construct_expanded_state(params)
            sql, names, given = expanded.statement, expanded.positiontup or (), expanded.parameters
            # SQLAlchemy's converters of a list's items, and ours of the other parameters.
            converters = {**self.converters, **expanded.processors}
        else:
            sql, names, given = self.sql, self.names, self.compiled.construct_params(params)
            converters = self.converters
        return sql, [
            converters[name](given[name]) if name in converters else given[name] for name in names
        ]

    def rows(self, driver_connection: Any, params: Mapping[str, Any] | None) -> list[Any]:
        """Its rows (tuples), read on a sqlite3 connection."""
        sql, values = self.bound(params)
        cursor = driver_connection.execute(sql, values)
        try:
            rows: list[Any] = cursor.fetchall()
        finally:
            cursor.close()
        if self.column_converters:
            converted = []
            for row in rows:
                items = list(row)
                for position, convert in self.column_converters:
                    items[position] = convert(items[position])
                converted.append(tuple(items))
            return converted
        return rows


# What driver_read takes: a select, or a text() with its columns named (.columns()).
ReadStatement = TypeVar("ReadStatement", Select[Any], TextualSelect)


def driver_read(statement: ReadStatement) -> ReadStatement:
    """Mark a read statement built once (a module constant) to go straight to the driver
    when a SingleRead or read_rows runs it on SQLite: SQLAlchemy's work around a read (a
    Connection, the statement cache, parameter and result processing) cost more than
    SQLite's own."""
    _DRIVER_READS.setdefault(id(statement), DriverRead(statement))
    return statement


def read_rows(
    session: Session, statement: Select[Any] | TextualSelect, params: Mapping[str, Any]
) -> list[tuple[Any, ...]]:
    """The rows (tuples) of a read statement in the session's transaction: on SQLite a
    driver_read statement goes straight to the driver on the session's connection (no
    Row objects, no result processing: what a read of thousands of rows costs most),
    any other through SQLAlchemy."""
    connection = session.connection()
    found = _DRIVER_READS.get(id(statement))
    if found is not None and connection.dialect.name == "sqlite":
        return found.rows(connection.connection.driver_connection, params)
    return [tuple(row) for row in connection.execute(statement, dict(params))]


class SingleRead:
    """Runs ONE read statement (Database.single_read): on SQLite a driver_read statement
    on a pooled connection's driver directly, any other through SQLAlchemy, without a
    BEGIN (a lone statement reads one snapshot)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._raw: Any = None

    def execute(self, statement: Executable, params: Mapping[str, Any] | None = None) -> list[Any]:
        """The statement's rows (tuples)."""
        found = _DRIVER_READS.get(id(statement))
        if found is not None and self.engine.dialect.name == "sqlite":
            if self._raw is None:
                self._raw = self.engine.raw_connection()
            return found.rows(self._raw.driver_connection, params)
        with self.engine.connect() as connection:
            single = connection.execution_options(**{SINGLE_STATEMENT: True})
            return list(single.execute(statement, dict(params or {})))

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()  # back to the pool (which rolls back nothing: no BEGIN)
            self._raw = None


# Where read-side queries run: a Session (in a unit of work), a bare Connection, or a
# SingleRead (the budget check and the tenant summary, one statement).
Reader = Session | Connection | SingleRead


# session.info key: names of the tables whose rows a write session added, changed or deleted
# through the ORM (bulk UPDATE statements of counters are not tracked: nothing caches them).
CHANGED_TABLES = "tl_changed_tables"


@event.listens_for(Session, "after_flush")
def _track_changes(session: Session, _context: Any) -> None:
    tables = session.info.setdefault(CHANGED_TABLES, set())
    for instance in (*session.new, *session.dirty, *session.deleted):
        table = getattr(instance, "__tablename__", None)
        if table is not None:
            tables.add(table)


def notify_changed(url: str, tables: frozenset[str]) -> None:
    """After a commit: every Database of this process on the same database drops its
    cached rows of these tables (other processes see the change within the caches' TTL)."""
    with _listeners_lock:
        databases = list(_listeners.get(url, ()))
    for database in databases:
        for listener in database.caches:
            listener(tables)


def insert_for(session: Session) -> Any:
    """The dialect's insert(), which has on_conflict_do_nothing / do_update on both backends."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert
    return sqlite.insert


_DRIVER_STATEMENTS: dict[tuple[Any, ...], tuple[str, Callable[[Any], tuple[Any, ...]]]] = {}


def execute_rows(session: Session, statement: UpdateBase, rows: list[dict[str, Any]]) -> None:
    """Run a Core statement once per row of plain values (integers and text), in one
    executemany.

    On SQLite the statement is compiled once per process and the rows go straight to the
    driver: SQLAlchemy's per-row parameter processing was most of the cost of writing a
    thousand rollup rows. Elsewhere SQLAlchemy runs it (on PostgreSQL its insertmanyvalues
    batches the rows). The statement must be a long-lived object (a module constant or a
    cached one): it is known by its identity. Every row has the same keys.
    """
    if not rows:
        return
    dialect = session.get_bind().dialect
    if dialect.name != "sqlite":
        session.execute(statement, rows)
        return
    columns = tuple(rows[0])
    key = (dialect.name, id(statement), columns)
    found = _DRIVER_STATEMENTS.get(key)
    if found is None:
        # column_keys: an INSERT names the columns given, not every column of its table.
        compiled = statement.compile(dialect=dialect, column_keys=list(columns))
        names = tuple(compiled.positiontup or ())
        # The columns the rows leave out that the statement still binds: their defaults.
        defaults = {name: _scalar_default(statement, name) for name in names if name not in columns}
        pick = _picker(names, defaults)
        found = _DRIVER_STATEMENTS[key] = (compiled.string, pick)
    sql, pick = found
    session.connection().exec_driver_sql(sql, [pick(row) for row in rows])


def execute_values(
    session: Session,
    statement: UpdateBase,
    columns: tuple[str, ...],
    rows: list[tuple[Any, ...]],
) -> None:
    """execute_rows for rows given as tuples of `columns` (none left out): on SQLite they go
    to the driver as they are, with no dict built per row."""
    if not rows:
        return
    dialect = session.get_bind().dialect
    if dialect.name != "sqlite":
        session.execute(statement, [dict(zip(columns, row, strict=True)) for row in rows])
        return
    key = (dialect.name, id(statement), columns, "values")
    found = _DRIVER_STATEMENTS.get(key)
    if found is None:
        compiled = statement.compile(dialect=dialect, column_keys=list(columns))
        names = tuple(compiled.positiontup or ())
        if names == columns:
            pick: Callable[[Any], tuple[Any, ...]] = _same
        else:  # the statement binds them in its own order
            get = itemgetter(*(columns.index(name) for name in names))
            pick = (lambda row: (get(row),)) if len(names) == 1 else get
        found = _DRIVER_STATEMENTS[key] = (compiled.string, pick)
    sql, pick = found
    session.connection().exec_driver_sql(
        sql, rows if pick is _same else [pick(row) for row in rows]
    )


def _same(row: Any) -> Any:
    return row


def _picker(names: tuple[str, ...], defaults: dict[str, Any]) -> Callable[[Any], tuple[Any, ...]]:
    """A row's values in the order of `names` (one C call when the rows give them all)."""
    get = itemgetter(*names)
    if len(names) == 1:
        return lambda row: (get(row),)
    if defaults:
        return lambda row: get({**defaults, **row})
    return get


def _scalar_default(statement: UpdateBase, name: str) -> Any:
    column = statement.table.c.get(name)
    default = column.default if column is not None else None
    if default is None or not default.is_scalar:
        raise ValueError(f"{name}: every row must give it (no constant default)")
    return default.arg
