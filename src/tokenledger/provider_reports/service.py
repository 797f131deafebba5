"""Provider bills: import a provider's reports (one sync), map its accounts to
organizations, and compare its figures with the ledger's per UTC day and model.

A sync writes its rows under its own id, in chunks (the database's writer is never held
for the whole import), and then, in one transaction, makes them the figures of their days
(provider_report_days), records the figures they replace in the audit log and raises
provider.drift alerts. Until that transaction commits nobody sees the new rows; a failed
sync deletes them: nothing is ever stored by halves.
"""

from __future__ import annotations

import logging
import operator
import secrets
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    BindParameter,
    CursorResult,
    Integer,
    Select,
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    type_coerce,
    union_all,
    update,
)
from sqlalchemy import cast as cast_
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import UpdateBase

from tokenledger import schemas
from tokenledger.alerts.models import Alert
from tokenledger.alerts.service import queue_deliveries
from tokenledger.audit import service as audit
from tokenledger.config import Settings
from tokenledger.db import Database, driver_read, execute_values, insert_for, read_rows
from tokenledger.errors import DomainError, not_found
from tokenledger.money import divide_half_even, format_usd
from tokenledger.organizations.models import Organization
from tokenledger.provider_reports.models import (
    ACCOUNT_KINDS,
    PROVIDERS,
    TOKEN_KINDS,
    ProviderAccount,
    ProviderDriftAlert,
    ProviderReportDay,
    ProviderReportRow,
    ProviderReportTotal,
    ProviderSync,
    ProviderSyncLease,
)
from tokenledger.provider_reports.sources import (
    FIGURES,
    ReportRow,
    RowKey,
    anthropic_rows,
    openai_rows,
)
from tokenledger.usage.models import UTC_ROLLUP_FIELDS, UsageUtcDaily

log = logging.getLogger("tokenledger.provider_reports")

ROWS = cast(Table, ProviderReportRow.__table__)
TOTALS = cast(Table, ProviderReportTotal.__table__)
SYNCS = cast(Table, ProviderSync.__table__)
LEASES = cast(Table, ProviderSyncLease.__table__)
DAYS = cast(Table, ProviderReportDay.__table__)
ACCOUNTS = cast(Table, ProviderAccount.__table__)

assert (*TOKEN_KINDS, "requests", "cost_nano") == FIGURES
ROW_COLUMNS = ("sync_id", "day", "model", "api_key_id", "workspace_id", *FIGURES)
# A sync writes its rows in chunks of a few days (each in its own short transaction).
CHUNK_ROWS = 20_000
MAX_CHUNK_ROWS = 50_000
LEASE_SECONDS = 30 * 60
MAX_RANGE_DAYS = 400
# Where a provider's workspaces (Anthropic) or projects (OpenAI) are kept.
GROUP_KIND = {"anthropic": "workspace", "openai": "project"}
ADMIN_KEY_VARIABLE = {
    "anthropic": "TOKENLEDGER_ANTHROPIC_ADMIN_KEY",
    "openai": "TOKENLEDGER_OPENAI_ADMIN_KEY",
}


def utc_day_start(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def check_provider(provider: str) -> str:
    if provider not in PROVIDERS:
        raise DomainError(
            422, "unknown_provider", f"provider must be one of {', '.join(PROVIDERS)}"
        )
    return provider


def check_range(first: date, last: date) -> None:
    if last < first:
        raise DomainError(422, "invalid_range", "to must not be before from")
    if (last - first).days + 1 > MAX_RANGE_DAYS:
        raise DomainError(422, "invalid_range", f"at most {MAX_RANGE_DAYS} days at once")


# Clients ------------------------------------------------------------------------------


def sdk_client(
    settings: Settings, provider: str, *, max_retries: int = 5, strict: bool = False
) -> Any:
    """The provider's official SDK client with the admin key; the key stays inside it.

    strict: the SDK validates every answer against its types (tests), instead of taking
    fields it does not know as they come.
    """
    secret = settings.anthropic_admin_key if provider == "anthropic" else settings.openai_admin_key
    if secret is None or not secret.get_secret_value():
        raise DomainError(
            400,
            "provider_admin_key_missing",
            f"set {ADMIN_KEY_VARIABLE[provider]} to import {provider}'s reports",
        )
    # The SDKs are imported here, when a sync runs: they are large, and a server that never
    # syncs need not load them.
    if provider == "anthropic":
        import anthropic

        return anthropic.Anthropic(
            api_key=secret.get_secret_value(),
            base_url=settings.anthropic_base_url,
            max_retries=max_retries,
            _strict_response_validation=strict,
        )
    import openai

    return openai.OpenAI(
        api_key="unused",  # the usage and cost routes authenticate with the admin key
        admin_api_key=secret.get_secret_value(),
        base_url=settings.openai_base_url,
        max_retries=max_retries,
        _strict_response_validation=strict,
    )


def report_rows(provider: str, client: Any, first: date, last: date) -> Generator[ReportRow]:
    reader = anthropic_rows if provider == "anthropic" else openai_rows
    return reader(client, first, last)


# The sync lease -------------------------------------------------------------------------


def claim_lease(database: Database, provider: str, holder: str, now: datetime) -> bool:
    """Take the provider's sync lease unless another holder's has not run out."""
    table = LEASES
    with database.session(write=True) as session:
        session.execute(
            insert_for(session)(table)
            .values(provider=provider, holder="", locked_until=now - timedelta(seconds=1))
            .on_conflict_do_nothing(index_elements=["provider"])
        )
        claimed = cast(
            CursorResult[Any],
            session.execute(
                update(table)
                .where(
                    table.c.provider == provider,
                    or_(table.c.locked_until < now, table.c.holder == holder),
                )
                .values(holder=holder, locked_until=now + timedelta(seconds=LEASE_SECONDS))
            ),
        )
        return bool(claimed.rowcount)


def release_lease(database: Database, provider: str, holder: str) -> None:
    table = LEASES
    with database.session(write=True) as session:
        session.execute(
            update(table)
            .where(table.c.provider == provider, table.c.holder == holder)
            .values(holder="", locked_until=datetime(1970, 1, 2, tzinfo=UTC))
        )


# Sync ---------------------------------------------------------------------------------


@dataclass
class SyncResult:
    sync_id: int
    provider: str
    first_day: str
    last_day: str
    rows: int
    days: int
    partial_days: list[str]
    alerts: list[int] = field(default_factory=list)


_UPSERTS: dict[str, UpdateBase] = {}


def _row_upsert(session: Session) -> UpdateBase:
    """Insert a chunk's rows, adding to a row of the same key (usage and cost rows of one
    day, model and account meet here)."""
    dialect = session.get_bind().dialect.name
    found = _UPSERTS.get(dialect)
    if found is None:
        table = ROWS
        statement = insert_for(session)(table)
        found = _UPSERTS[dialect] = statement.on_conflict_do_update(
            index_elements=["sync_id", "day", "model", "api_key_id", "workspace_id"],
            set_={name: table.c[name] + statement.excluded[name] for name in FIGURES},
        )
    return found


def _chunks(
    rows: Iterable[ReportRow], first: str, last: str, sync_id: int, size: int
) -> Iterator[list[tuple[Any, ...]]]:
    """Rows merged by key, as tuples of ROW_COLUMNS, a key once per chunk.

    A chunk ends where a day ends once it holds `size` keys: the readers give a day's
    usage rows and cost rows together, so a key is written once, whole (a plain insert).
    A day of more keys than the limit (2.5 x size) is written in parts (memory stays
    bounded); the upsert then adds the parts of a key that met in different chunks.
    """
    limit = max(size * MAX_CHUNK_ROWS // CHUNK_ROWS, 1)
    chunk: dict[RowKey, tuple[int, ...]] = {}
    day = ""
    inside = False
    for key, values in rows:
        if key[0] != day:
            day = key[0]
            inside = first <= day <= last
            if len(chunk) >= size:
                yield _values(chunk, sync_id)
                chunk = {}
        if not inside:
            continue  # a bucket outside the asked range (an API rounding its bounds)
        if min(values) < 0:
            raise ValueError(f"negative figure in the report for {key}")
        found = chunk.get(key)
        chunk[key] = values if found is None else tuple(map(operator.add, found, values))
        if len(chunk) >= limit:
            yield _values(chunk, sync_id)
            chunk = {}
    if chunk:
        yield _values(chunk, sync_id)


def _values(chunk: dict[RowKey, tuple[int, ...]], sync_id: int) -> list[tuple[Any, ...]]:
    return [(sync_id, *key, *values) for key, values in chunk.items()]


def sync(
    database: Database,
    settings: Settings,
    provider: str,
    first: date,
    last: date,
    now: datetime,
    *,
    actor: str,
    client: Any = None,
    holder: str | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> SyncResult:
    """Import the provider's reports of the UTC days first..last (inclusive) and make them
    the figures of those days. Raises DomainError (409 while another sync of the provider
    runs, 502 when the provider's answers fail) and then stores nothing.

    chunk_rows: how many keys a write takes at least (see _chunks).
    """
    check_provider(provider)
    check_range(first, last)
    today = now.astimezone(UTC).date()
    if last > today:
        raise DomainError(422, "invalid_range", "to must not be after today (UTC)")
    owned = client is None
    if client is None:
        client = sdk_client(settings, provider)
    try:
        holder = holder or f"sync-{secrets.token_hex(8)}"
        if not claim_lease(database, provider, holder, now):
            raise DomainError(409, "provider_sync_running", f"a sync of {provider} is running")
        try:
            return _sync_holding_lease(
                database,
                settings,
                provider,
                first,
                last,
                now,
                actor=actor,
                client=client,
                chunk_rows=chunk_rows,
            )
        finally:
            release_lease(database, provider, holder)
    finally:
        if owned:
            client.close()  # its connection pool: a client made here is closed here


def _sync_holding_lease(
    database: Database,
    settings: Settings,
    provider: str,
    first: date,
    last: date,
    now: datetime,
    *,
    actor: str,
    client: Any,
    chunk_rows: int,
) -> SyncResult:
    first_day, last_day = first.isoformat(), last.isoformat()
    with database.session(write=True) as session:
        record = ProviderSync(
            provider=provider,
            first_day=first_day,
            last_day=last_day,
            status="running",
            actor=actor,
            row_count=0,
            started_at=now,
        )
        session.add(record)
        session.flush()
        sync_id = record.id
    try:
        # Closed before anything else happens: a failed read stops its page threads.
        with closing(report_rows(provider, client, first, last)) as rows:
            _write_chunks(database, _chunks(rows, first_day, last_day, sync_id, chunk_rows))
        with database.session(write=True) as session:
            result = _make_current(
                session, settings, provider, sync_id, first, last, now, actor=actor
            )
    except Exception as exc:
        reason = _reason(exc)
        log.warning("sync %s of %s failed: %s", sync_id, provider, reason)
        with database.session(write=True) as session:
            session.execute(delete(ROWS).where(ROWS.c.sync_id == sync_id))
            session.execute(
                update(SYNCS)
                .where(SYNCS.c.id == sync_id)
                .values(status="failed", error=reason, finished_at=now)
            )
        if isinstance(exc, DomainError):
            raise
        raise DomainError(
            502, "provider_sync_failed", f"the {provider} sync failed, nothing was stored: {reason}"
        ) from exc
    with database.session(write=True) as session:
        _drop_superseded(session, provider, sync_id)
    return result


def _write_chunks(database: Database, chunks: Iterator[list[tuple[Any, ...]]]) -> None:
    """Each chunk in a transaction of its own, written by a thread while the next chunk is
    read (the database's work overlaps the reading). Returns once every chunk is written;
    raises the first error, and then no write is still running."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="provider-report-rows") as pool:
        pending: Future[None] | None = None
        for chunk in chunks:
            if pending is not None:
                pending.result()
            pending = pool.submit(_write_chunk, database, chunk)
        if pending is not None:
            pending.result()


def _write_chunk(database: Database, chunk: list[tuple[Any, ...]]) -> None:
    with database.session(write=True) as session:
        execute_values(session, _row_upsert(session), ROW_COLUMNS, chunk)


def _reason(exc: BaseException) -> str:
    """A one-line reason: the SDK's error names the status and the provider's message."""
    status = getattr(exc, "status_code", None)
    text = " ".join(str(exc).split()) or type(exc).__name__
    return (f"HTTP {status}: {text}" if status else f"{type(exc).__name__}: {text}")[:500]


def _make_current(
    session: Session,
    settings: Settings,
    provider: str,
    sync_id: int,
    first: date,
    last: date,
    now: datetime,
    *,
    actor: str,
) -> SyncResult:
    """The one transaction that makes a sync's rows the figures of its days."""
    rows = ROWS
    totals = TOTALS
    first_day, last_day = first.isoformat(), last.isoformat()
    sums = [func.sum(rows.c[name]) for name in FIGURES]
    session.execute(
        insert(totals).from_select(
            ["sync_id", "day", "model", *FIGURES],
            select(rows.c.sync_id, rows.c.day, rows.c.model, *sums)
            .where(rows.c.sync_id == sync_id)
            .group_by(rows.c.sync_id, rows.c.day, rows.c.model),
        )
    )
    row_count = session.scalar(select(func.count()).where(rows.c.sync_id == sync_id)) or 0
    _remember_accounts(session, provider, sync_id)
    days = [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]
    today = now.astimezone(UTC).date().isoformat()
    previous = dict(
        session.execute(
            select(ProviderReportDay.day, ProviderReportDay.sync_id).where(
                ProviderReportDay.provider == provider, ProviderReportDay.day.in_(days)
            )
        ).all()
    )
    after = _figures_by_day(session, dict.fromkeys(days, sync_id))
    before = _figures_by_day(session, previous)
    for day in days:
        audit.record(
            session,
            actor=actor,
            action="provider_report.sync",
            entity_type="provider_report_day",
            entity_id=f"{provider}:{day}",
            before=None
            if day not in previous
            else {"sync_id": previous[day], "models": before.get(day, {})},
            after={"sync_id": sync_id, "partial": day >= today, "models": after.get(day, {})},
            client_address=None,
        )
    table = DAYS
    statement = insert_for(session)(table)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["provider", "day"],
            set_={
                "sync_id": statement.excluded.sync_id,
                "partial": statement.excluded.partial,
                "synced_at": statement.excluded.synced_at,
            },
        ),
        [
            {
                "provider": provider,
                "day": day,
                "sync_id": sync_id,
                "partial": day >= today,
                "synced_at": now,
            }
            for day in days
        ],
    )
    session.execute(
        update(SYNCS)
        .where(SYNCS.c.id == sync_id)
        .values(status="succeeded", row_count=row_count, finished_at=now)
    )
    alerts = raise_drift_alerts(
        session, provider, first, last, now, settings.provider_drift_alert_percent
    )
    return SyncResult(
        sync_id=sync_id,
        provider=provider,
        first_day=first_day,
        last_day=last_day,
        rows=row_count,
        days=len(days),
        partial_days=[day for day in days if day >= today],
        alerts=alerts,
    )


def _figures_by_day(session: Session, sync_of_day: dict[str, int]) -> dict[str, dict[str, Any]]:
    """{day: {model: figures}} of the syncs given per day (for the audit log)."""
    if not sync_of_day:
        return {}
    totals = TOTALS
    result: dict[str, dict[str, Any]] = {}
    query = select(totals).where(
        totals.c.sync_id.in_(set(sync_of_day.values())), totals.c.day.in_(list(sync_of_day))
    )
    for row in session.execute(query).mappings():
        if sync_of_day.get(row["day"]) != row["sync_id"]:
            continue
        figures: dict[str, Any] = {name: row[name] for name in (*TOKEN_KINDS, "requests")}
        figures["cost_usd"] = format_usd(row["cost_nano"])
        result.setdefault(row["day"], {})[row["model"]] = figures
    return result


def _remember_accounts(session: Session, provider: str, sync_id: int) -> None:
    """Every API key and workspace/project the sync saw becomes an account (unassigned
    until an operator maps it), with the first and last day it was seen."""
    rows = ROWS
    seen: list[dict[str, Any]] = []
    for kind, column in (
        ("api_key", rows.c.api_key_id),
        (GROUP_KIND[provider], rows.c.workspace_id),
    ):
        query = (
            select(column, func.min(rows.c.day), func.max(rows.c.day))
            .where(rows.c.sync_id == sync_id, column != "")
            .group_by(column)
        )
        for external_id, first_seen, last_seen in session.execute(query):
            seen.append(
                {
                    "provider": provider,
                    "kind": kind,
                    "external_id": external_id,
                    "first_seen_day": first_seen,
                    "last_seen_day": last_seen,
                }
            )
    if not seen:
        return
    table = ACCOUNTS
    statement = insert_for(session)(table)
    excluded = statement.excluded
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["provider", "kind", "external_id"],
            set_={
                "first_seen_day": case(
                    (table.c.first_seen_day.is_(None), excluded.first_seen_day),
                    (excluded.first_seen_day < table.c.first_seen_day, excluded.first_seen_day),
                    else_=table.c.first_seen_day,
                ),
                "last_seen_day": case(
                    (table.c.last_seen_day.is_(None), excluded.last_seen_day),
                    (excluded.last_seen_day > table.c.last_seen_day, excluded.last_seen_day),
                    else_=table.c.last_seen_day,
                ),
            },
        ),
        seen,
    )


def _drop_superseded(session: Session, provider: str, sync_id: int) -> None:
    """Rows and totals of earlier syncs for days this sync now holds: no longer seen."""
    current = select(ProviderReportDay.sync_id, ProviderReportDay.day).where(
        ProviderReportDay.provider == provider
    )
    held = {(row.sync_id, row.day) for row in session.execute(current)}
    older = session.execute(
        select(ProviderReportTotal.sync_id, ProviderReportTotal.day)
        .join(ProviderSync, ProviderSync.id == ProviderReportTotal.sync_id)
        .where(ProviderSync.provider == provider, ProviderReportTotal.sync_id != sync_id)
        .distinct()
    ).all()
    for old_sync, day in older:
        if (old_sync, day) in held:
            continue
        for table in (ROWS, TOTALS):
            session.execute(delete(table).where(table.c.sync_id == old_sync, table.c.day == day))


# Mapping ------------------------------------------------------------------------------


def list_accounts(session: Session, provider: str | None) -> list[ProviderAccount]:
    query = select(ProviderAccount).order_by(
        ProviderAccount.provider, ProviderAccount.kind, ProviderAccount.external_id
    )
    if provider:
        query = query.where(ProviderAccount.provider == check_provider(provider))
    return list(session.scalars(query))


def account_snapshot(account: ProviderAccount) -> dict[str, Any]:
    return {
        "provider": account.provider,
        "kind": account.kind,
        "external_id": account.external_id,
        "organization_id": account.organization_id,
    }


def map_account(
    session: Session,
    provider: str,
    kind: str,
    external_id: str,
    organization_id: int | None,
    by: audit.Actor,
) -> ProviderAccount:
    """Map a provider account to an organization (None: unassigned); it need not have been
    seen yet. Audited."""
    check_provider(provider)
    allowed = ("api_key", GROUP_KIND[provider])
    if kind not in allowed:
        raise DomainError(422, "invalid_account_kind", f"kind must be one of {', '.join(allowed)}")
    if organization_id is not None and session.get(Organization, organization_id) is None:
        raise not_found("organization", organization_id)
    account = session.scalars(
        select(ProviderAccount).where(
            ProviderAccount.provider == provider,
            ProviderAccount.kind == kind,
            ProviderAccount.external_id == external_id,
        )
    ).first()
    before = account_snapshot(account) if account is not None else None
    if account is None:
        account = ProviderAccount(provider=provider, kind=kind, external_id=external_id)
        session.add(account)
    account.organization_id = organization_id
    session.flush()
    audit.record_change(
        session,
        by,
        "provider_account.map",
        "provider_account",
        # By its id: provider, kind and an external id of up to 128 characters pass the
        # entry's 64; the entry's after names them.
        account.id,
        before=before,
        after=account_snapshot(account),
    )
    return account


assert set(GROUP_KIND.values()) | {"api_key"} == set(ACCOUNT_KINDS)


# Comparison ---------------------------------------------------------------------------


def ratio_units(part: int, whole: int, places: int) -> int | None:
    """part / whole in units of 10**-places, rounded half to even (integers only); None
    when whole is 0 (whole is never negative)."""
    if whole == 0:
        return None
    return divide_half_even(part * 10**places, whole)


def ratio(part: int, whole: int) -> Decimal | None:
    """part / whole to 4 places, half to even; None when whole is 0."""
    units = ratio_units(part, whole, 4)
    return None if units is None else Decimal(units).scaleb(-4)


def drift_nano(provider_nano: int, ledger_nano: int) -> int:
    """The drift of a row, a day or a range: what the provider billed beyond what the ledger
    recorded (negative: the ledger recorded more)."""
    return provider_nano - ledger_nano


def drift_percent(drift_nano: int, provider_nano: int) -> Decimal | None:
    """Drift in percent of the provider's cost, to 2 places; None when that cost is 0."""
    units = ratio_units(drift_nano * 100, provider_nano, 2)
    return None if units is None else Decimal(units).scaleb(-2)


# The ledger keeps no count of web searches per event column: the kind is provider-only.
LEDGER_KINDS = tuple(kind for kind in TOKEN_KINDS if kind != "web_search_requests")
assert UTC_ROLLUP_FIELDS[:5] == LEDGER_KINDS
assert TOKEN_KINDS[-1] == "web_search_requests"

# A comparison row is one flat tuple (the key of its JSON in schemas: hashed and compared
# in C): day, model, partial (the day still open: 0/1 or a bool), then the provider's
# figures (TOKEN_KINDS, cost_nano), then the ledger's (LEDGER_KINDS, cost_nano,
# unpriced_events). Money in nano-USD, integers.
ComparisonRow = tuple[Any, ...]
PROVIDER_FIGURES = (*TOKEN_KINDS, "cost_nano")
LEDGER_FIGURES = (*LEDGER_KINDS, "cost_nano", "unpriced_events")
PROVIDER_AT = 3
PROVIDER_COST = PROVIDER_AT + len(TOKEN_KINDS)
LEDGER_AT = PROVIDER_COST + 1
LEDGER_COST = LEDGER_AT + len(LEDGER_KINDS)
LEDGER_UNPRICED = LEDGER_COST + 1
_NO_PROVIDER = (0,) * len(PROVIDER_FIGURES)
_NO_LEDGER = (None, None) + (0,) * len(LEDGER_FIGURES)

# The statements of the comparison, built once and read straight from SQLite's driver
# (db.read_rows; a year is 2 x 7,300 rows). Each side is of the days a sync holds only
# (joined to provider_report_days, which gives the provider's rows their `partial`). Sums
# are cast to BIGINT: PostgreSQL's would be decimals.
_UTC_DAILY = cast(Table, UsageUtcDaily.__table__)
_PROVIDER: BindParameter[str] = bindparam("provider")
_FIRST: BindParameter[str] = bindparam("first")
_LAST: BindParameter[str] = bindparam("last")
_ORGANIZATION: BindParameter[int] = bindparam("organization_id")
_GROUP_KIND: BindParameter[str] = bindparam("group_kind")
_HELD_DAYS = (DAYS.c.provider == _PROVIDER, DAYS.c.day.between(_FIRST, _LAST))
_PARTIAL = type_coerce(DAYS.c.partial, Integer)  # as stored (a bool on PostgreSQL)


def _summed(column: Any) -> Any:
    return cast_(func.sum(column), BigInteger)


_HELD = driver_read(select(DAYS.c.day, _PARTIAL).where(*_HELD_DAYS).order_by(DAYS.c.day))
# All accounts: the sync's totals, one row per day and model already (a day is held by
# one sync). The day is matched as `day || ''`, which SQLite does not carry over as a
# range to the totals (it would then read every day of the sync for each day held).
_PROVIDER_ALL = driver_read(
    select(TOTALS.c.day, TOTALS.c.model, _PARTIAL, *[TOTALS.c[name] for name in PROVIDER_FIGURES])
    .select_from(DAYS)
    .join(
        TOTALS,
        and_(TOTALS.c.sync_id == DAYS.c.sync_id, TOTALS.c.day == DAYS.c.day.concat("")),
    )
    .where(*_HELD_DAYS)
)


def _rows_through(kind: Any, external_id: Any) -> Select[Any]:
    """The report rows (of the syncs holding their days) of the accounts of this kind
    mapped to the organization, read through the index of their external id."""
    mine = ACCOUNTS.alias("mine")
    return (
        select(ROWS.c.day, ROWS.c.model, _PARTIAL, *[ROWS.c[name] for name in PROVIDER_FIGURES])
        .select_from(mine)
        .join(ROWS, and_(external_id == mine.c.external_id, ROWS.c.day.between(_FIRST, _LAST)))
        .join(
            DAYS,
            and_(
                DAYS.c.provider == mine.c.provider,
                # Written so that SQLite cannot read the rows from the days held (a range
                # scan of a sync's rows per day): only through the accounts' index.
                DAYS.c.day == ROWS.c.day.concat(""),
                DAYS.c.sync_id == ROWS.c.sync_id + 0,
            ),
        )
        .where(
            mine.c.provider == _PROVIDER,
            mine.c.kind == kind,
            mine.c.organization_id == _ORGANIZATION,
        )
    )


# One organization: the rows of its API keys, and those of its workspaces (projects)
# whose key is mapped to no organization: a key's own mapping wins over its workspace's.
_KEY = ACCOUNTS.alias("key_account")
_KEY_MAPPED = (
    select(_KEY.c.id)
    .where(
        _KEY.c.provider == _PROVIDER,
        _KEY.c.kind == "api_key",
        _KEY.c.external_id == ROWS.c.api_key_id,
        _KEY.c.organization_id.is_not(None),
    )
    .exists()
)
_ORG_ROWS = union_all(
    _rows_through(literal("api_key"), ROWS.c.api_key_id),
    _rows_through(_GROUP_KIND, ROWS.c.workspace_id).where(~_KEY_MAPPED),
).subquery("org_rows")
# Not summed here: SQLite's GROUP BY of the union (a sort of every row) took twice the
# time of reading the rows; an organization has a few keys and workspaces, and
# _per_day_and_model adds up the rows of a day and model that several of them gave.
_PROVIDER_ORG = driver_read(select(_ORG_ROWS))


def _per_day_and_model(rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows (day, model, partial, figures) summed per day and model."""
    found: dict[tuple[str, str], tuple[Any, ...]] = {}
    for row in rows:
        key = (row[0], row[1])
        before = found.get(key)
        if before is None:
            found[key] = row
        else:
            found[key] = before[:3] + tuple(map(operator.add, before[3:], row[3:]))
    return list(found.values())


def _ledger(organization: bool) -> Select[Any]:
    """The ledger's figures of the provider per UTC day and model: its UTC-day rollup
    (usage_utc_daily, kept with the events), summed over the organizations or of one
    (one row per day and model: its primary key)."""
    table = _UTC_DAILY
    on = and_(table.c.provider == DAYS.c.provider, table.c.day == DAYS.c.day)
    query = select(DAYS.c.day, table.c.model)  # no `partial`: a GROUP BY of fewer columns
    if organization:
        return (
            query.add_columns(*[table.c[name] for name in LEDGER_FIGURES])
            .select_from(DAYS)
            .join(table, and_(table.c.organization_id == _ORGANIZATION, on))
            .where(*_HELD_DAYS)
        )
    return (
        query.add_columns(*[_summed(table.c[name]) for name in LEDGER_FIGURES])
        .select_from(DAYS)
        .join(table, on)
        .where(*_HELD_DAYS)
        .group_by(DAYS.c.day, table.c.model)
    )


_LEDGER_ALL = driver_read(_ledger(organization=False))
_LEDGER_ORG = driver_read(_ledger(organization=True))


def merge_sides(
    theirs: Sequence[tuple[Any, ...]],
    ours: Sequence[tuple[Any, ...]],
    partial: Mapping[str, Any],
) -> list[ComparisonRow]:
    """The provider's rows (day, model, partial, figures) and the ledger's (day, model,
    figures) as comparison rows, by day and model (whatever the database's collation): a
    model only one side has is a row with zeros on the other.
    partial: of each day held."""
    ledger = {(row[0], row[1]): row for row in ours}
    pop = ledger.pop
    rows = [row + pop((row[0], row[1]), _NO_LEDGER)[2:] for row in theirs]
    rows.extend(
        (row[0], row[1], partial[row[0]], *_NO_PROVIDER, *row[2:]) for row in ledger.values()
    )
    rows.sort()  # a (day, model) is in one row only: decided by them, as Python orders text
    return rows


@dataclass
class DayFigures:
    day: str
    partial: bool
    provider_nano: int
    ledger_nano: int

    @property
    def drift_nano(self) -> int:
        return drift_nano(self.provider_nano, self.ledger_nano)


@dataclass
class Comparison:
    provider: str
    first: date
    last: date
    organization_id: int | None
    rows: list[ComparisonRow]
    days: list[DayFigures]

    @property
    def provider_nano(self) -> int:
        return sum(day.provider_nano for day in self.days)

    @property
    def ledger_nano(self) -> int:
        return sum(day.ledger_nano for day in self.days)


def compare(
    session: Session, provider: str, first: date, last: date, organization_id: int | None = None
) -> Comparison:
    """Per synced UTC day and model: the provider's figures against the ledger's.

    Only days a sync holds are compared (elsewhere the provider's side is unknown); a model
    only one side has is a row with zeros on the other. Its three reads share the session's
    transaction (one snapshot).
    """
    check_provider(provider)
    check_range(first, last)
    if organization_id is not None and session.get(Organization, organization_id) is None:
        raise not_found("organization", organization_id)
    params: dict[str, Any] = {
        "provider": provider,
        "first": first.isoformat(),
        "last": last.isoformat(),
    }
    held = read_rows(session, _HELD, params)
    rows: list[ComparisonRow] = []
    if held:
        if organization_id is None:
            theirs = read_rows(session, _PROVIDER_ALL, params)
            ours = read_rows(session, _LEDGER_ALL, params)
        else:
            params["organization_id"] = organization_id
            ours = read_rows(session, _LEDGER_ORG, params)
            params["group_kind"] = GROUP_KIND[provider]
            theirs = _per_day_and_model(read_rows(session, _PROVIDER_ORG, params))
        rows = merge_sides(theirs, ours, dict(held))
    per_day = {day: DayFigures(day, bool(partial), 0, 0) for day, partial in held}
    for row in rows:
        figures = per_day[row[0]]
        figures.provider_nano += row[PROVIDER_COST]
        figures.ledger_nano += row[LEDGER_COST]
    return Comparison(
        provider, first, last, organization_id, rows, [per_day[day] for day in sorted(per_day)]
    )


# provider.drift -----------------------------------------------------------------------


def raise_drift_alerts(
    session: Session,
    provider: str,
    first: date,
    last: date,
    now: datetime,
    threshold_percent: Decimal,
) -> list[int]:
    """A provider.drift alert for each closed day of the range whose drift (all models,
    all organizations) exceeds the threshold: once per provider and day, whatever the
    number of syncs. Returns the new alerts' ids."""
    new_ids: list[int] = []
    for day in compare(session, provider, first, last).days:
        percent = drift_percent(day.drift_nano, day.provider_nano)
        if day.partial or percent is None or abs(percent) <= threshold_percent:
            continue
        # Syncs of one provider run one at a time (the lease): a look, then the insert.
        if session.get(ProviderDriftAlert, (provider, day.day)) is not None:
            continue
        alert = Alert(
            organization_id=None,
            license_id=None,
            type="provider.drift",
            period=day.day,
            details={
                "provider": provider,
                "day": day.day,
                "provider_cost_usd": format_usd(day.provider_nano),
                "ledger_cost_usd": format_usd(day.ledger_nano),
                "drift_usd": format_usd(day.drift_nano),
                "drift_percent": str(percent),
                "threshold_percent": str(threshold_percent),
            },
            created_at=now,
        )
        session.add(alert)
        session.flush()
        session.add(ProviderDriftAlert(provider=provider, day=day.day, alert_id=alert.id))
        session.flush()
        new_ids.append(alert.id)
    if new_ids:
        queue_deliveries(session, new_ids, now)
    return new_ids


# Syncs, for the page and the API --------------------------------------------------------


def recent_syncs(session: Session, provider: str | None, limit: int = 20) -> list[ProviderSync]:
    query = select(ProviderSync).order_by(ProviderSync.id.desc()).limit(limit)
    if provider:
        query = query.where(ProviderSync.provider == provider)
    return list(session.scalars(query))


def default_range(now: datetime, days: int) -> tuple[date, date]:
    last = now.astimezone(UTC).date()
    return last - timedelta(days=days - 1), last


def parse_day(text: str) -> date:
    try:
        return schemas.parse_day(text)
    except ValueError as exc:
        raise DomainError(422, "invalid_date", f"{text!r}: {exc}") from exc
