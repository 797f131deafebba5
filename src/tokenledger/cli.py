"""The `tokenledger` command: migrate, serve, accounts, keys, demo data, reconcile, backup."""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from tokenledger.audit.service import Operator
from tokenledger.auth import service as auth_service
from tokenledger.auth.models import AdminUser
from tokenledger.auth.passwords import verify_password
from tokenledger.backup import POSTGRES_WAY, BackupError, backup_sqlite
from tokenledger.config import Settings, get_settings
from tokenledger.db import Database, retrying, utcnow
from tokenledger.errors import DomainError
from tokenledger.migrations import runner
from tokenledger.organizations.models import Organization
from tokenledger.schemas import check_instant

# A command that needs the web app, the price data, repricing, reconcile, demo data or the
# providers' SDKs imports them when it runs: together they take over a second to load
# (python -X importtime), which `migrate`, the account and key commands need not wait
# for. No circle needs it: nothing imports this module.

# Whose changes the command line's are, in the audit log.
CLI = Operator("cli")


class CliError(Exception):
    """A one-line reason to stop with exit code 1."""


def _database(settings: Settings, *, create: bool = False) -> Database:
    """The database; only `migrate` (create=True) may bring a new SQLite file into being."""
    path = settings.sqlite_path()
    if not create and path is not None and not path.exists():
        raise CliError(
            f"database {path} does not exist: check TOKENLEDGER_DATABASE_URL, "
            "or create it with `tokenledger migrate`"
        )
    return Database(settings)


def _require_migrated(database: Database) -> None:
    current = runner.current_revision(database.engine)
    if current != runner.head_revision():
        state = "has no schema" if current is None else f"is at {current}"
        raise CliError(
            f"database {state}, newest is {runner.head_revision()}: run `tokenledger migrate` first"
        )


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    database = _database(settings, create=True)
    before = runner.current_revision(database.engine)
    runner.upgrade(database.engine)
    after = runner.current_revision(database.engine)
    if before == after:
        print(f"database already at the newest schema ({after})")
    else:
        print(f"database migrated from {before or 'empty'} to {after}")
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from tokenledger.app import UVICORN_OPTIONS

    database = _database(settings)
    _require_migrated(database)
    try:
        settings.signing_key()  # create the embedded key before workers race to
    except RuntimeError as exc:
        raise CliError(str(exc)) from exc
    database.dispose()
    if args.workers < 1:
        raise CliError("--workers must be at least 1")
    metrics_directory = _metrics_directory(args.workers)
    options: dict[str, Any] = {
        "factory": True,
        "host": args.host,
        "port": args.port,
        "workers": args.workers,
        "log_level": "info",
        # A worker that misses its supervisor's ping for this long is killed and replaced:
        # uvicorn's 5 s killed workers still starting on a busy 2-core machine.
        "timeout_worker_healthcheck": 30,
        **UVICORN_OPTIONS,
    }
    try:
        if args.workers == 1:
            uvicorn.run("tokenledger.app:create_app", **options)
        else:
            from uvicorn.supervisors import Multiprocess

            config = uvicorn.Config("tokenledger.app:create_app", **options)
            with contextlib.suppress(KeyboardInterrupt):
                Multiprocess(config, sockets=[tcp_socket(config)]).run()
    finally:
        if metrics_directory is not None:
            shutil.rmtree(metrics_directory, ignore_errors=True)
    return 0


def tcp_socket(config: Any) -> socket.socket:
    """The listening socket uvicorn binds for its workers, marked as TCP.

    uvicorn's bind_socket() leaves the protocol number at 0; accepted connections inherit
    it, and asyncio sets TCP_NODELAY only on sockets that say IPPROTO_TCP. Without it each
    keep-alive request after the first waited for the client's delayed ACK: about 45 ms
    with --workers 2 (uvicorn issue 3149, open in 0.54.0).
    """
    bound: socket.socket = config.bind_socket()
    if bound.family not in (socket.AF_INET, socket.AF_INET6):
        return bound
    marked = socket.socket(bound.family, bound.type, socket.IPPROTO_TCP, fileno=bound.detach())
    marked.set_inheritable(True)
    return marked


def _metrics_directory(workers: int) -> str | None:
    """With several workers, prometheus_client's multiprocess mode: each worker writes its
    figures to files in one directory, and /metrics adds them up. The directory is emptied
    at start (figures of an earlier run would count twice); returns it when it is ours to
    remove at exit.
    """
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
        return None
    if workers == 1:
        return None
    made = tempfile.mkdtemp(prefix="tokenledger-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = made  # inherited by the worker processes
    return made


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif args.password is not None:
        password = args.password
    else:
        raise CliError("give --password or --password-stdin")
    return password


def cmd_create_admin(args: argparse.Namespace, settings: Settings) -> int:

    database = _database(settings)
    _require_migrated(database)
    password = _read_password(args)
    with database.session(write=True) as session:
        user = auth_service.create_admin(session, args.email, password, args.role, actor=CLI)
        role, email = user.role, user.email
    print(f"created {role} {email}")
    return 0


def cmd_api_key_create(args: argparse.Namespace, settings: Settings) -> int:

    database = _database(settings)
    _require_migrated(database)
    with database.session(write=True) as session:
        key, secret = auth_service.create_api_key(session, args.name, args.org, actor=CLI)
        scope = f"organization {args.org}" if args.org else "all organizations (service key)"
        print(secret)
        print(
            f"key {key.id} '{key.name}' for {scope}; store it now, it is not shown again",
            file=sys.stderr,
        )
    return 0


def cmd_api_key_list(args: argparse.Namespace, settings: Settings) -> int:

    database = _database(settings)
    _require_migrated(database)
    with database.session(write=False) as session:
        keys = auth_service.list_api_keys(session)
        slugs = {org.id: org.slug for org in session.query(Organization).all()}
        print(f"{'id':>4}  {'prefix':<12} {'organization':<24} {'last used':<20} {'state':<8} name")
        for key in keys:
            org = slugs.get(key.organization_id, "?") if key.organization_id else "(service)"
            used = key.last_used_at.strftime("%Y-%m-%d %H:%M") if key.last_used_at else "never"
            state = "revoked" if key.revoked_at else "active"
            print(f"{key.id:>4}  {key.prefix:<12} {org:<24} {used:<20} {state:<8} {key.name}")
    return 0


def cmd_api_key_revoke(args: argparse.Namespace, settings: Settings) -> int:

    database = _database(settings)
    _require_migrated(database)
    with database.session(write=True) as session:
        key = auth_service.revoke_api_key(session, args.id, actor=CLI, now=utcnow())
        key_id, name = key.id, key.name
    print(f"revoked key {key_id} '{name}'")
    return 0


def _initial_admin_file(settings: Settings) -> Path | None:
    path = settings.sqlite_path()
    return path.parent / "initial-admin.txt" if path else None


def ensure_first_admin(database: Database, settings: Settings) -> None:
    """Create the first admin when there is none, and print its login."""

    login_file = _initial_admin_file(settings)
    with database.session(write=True) as session:
        if auth_service.count_admins(session) == 0:
            email, password = "admin@example.com", secrets.token_urlsafe(12)
            auth_service.create_admin(session, email, password, "admin", actor=None)
            if login_file:
                login_file.write_text(f"{email}\n{password}\n")
                login_file.chmod(0o600)
            print(f"admin login: {email} / {password}")
            return
        if login_file and login_file.exists():
            email, password = login_file.read_text().split("\n")[:2]
            user = session.query(AdminUser).filter_by(email=email).one_or_none()
            if user and verify_password(user.password_hash, password):
                print(f"admin login: {email} / {password}")
                return
        print("admin login: use an account made with `tokenledger create-admin`")


def cmd_run_local(args: argparse.Namespace, settings: Settings) -> int:
    """What `make run` does: migrate, first admin, demo data on first start, serve."""
    database = _database(settings, create=True)
    first_start = runner.current_revision(database.engine) is None
    runner.upgrade(database.engine)
    settings.signing_key()
    if first_start:
        from tokenledger.demo import load_demo_data

        with database.session(write=True) as session:
            summary = load_demo_data(session, settings)
        print(f"demo data loaded: {summary}")
    ensure_first_admin(database, settings)
    print(f"serving on http://{args.host}:{args.port}")
    database.dispose()
    args.workers = 1
    return cmd_serve(args, settings)


def cmd_demo_data(args: argparse.Namespace, settings: Settings) -> int:
    from tokenledger.demo import load_demo_data

    database = _database(settings)
    _require_migrated(database)
    with database.session(write=True) as session:
        summary = load_demo_data(session, settings)
    print(f"demo data loaded: {summary}")
    return 0


def cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    from tokenledger.ledger.reconcile import reconcile

    database = _database(settings)
    _require_migrated(database)
    with database.session(write=True) as session:
        drift = reconcile(session, fix=args.fix)
    for line in drift:
        print(line)
    if not drift:
        print("no drift: every rollup and balance equals the sum of its events")
        return 0
    if args.fix:
        print(f"fixed {len(drift)} drifting figures")
        return 0
    return 1


def cmd_backup(args: argparse.Namespace, settings: Settings) -> int:

    source = settings.sqlite_path()
    if source is None:
        if settings.is_sqlite:
            raise CliError("an in-memory database has nothing to back up")
        raise CliError(f"`tokenledger backup` copies the embedded SQLite database; {POSTGRES_WAY}")
    _database(settings).dispose()  # refuses a database that does not exist
    try:
        result = backup_sqlite(source, Path(args.path))
    except BackupError as exc:
        raise CliError(str(exc)) from exc
    print(
        f"backup of {source} written to {result.path} "
        f"({result.size_bytes} bytes, schema {result.schema_revision or 'none'})"
    )
    return 0


def cmd_prices(args: argparse.Namespace, settings: Settings) -> int:
    from tokenledger.pricing import overrides

    database = _database(settings)
    _require_migrated(database)
    if args.prices_command == "list":
        with database.session(write=False) as session:
            for line in overrides.describe(session):
                print(line)
        return 0
    with database.session(write=True) as session:
        if args.prices_command == "set":
            row = overrides.set_override(
                session,
                provider=args.provider,
                model=args.model,
                rates={
                    "input": args.input,
                    "output": args.output,
                    "cache_write_5m": args.cache_write_5m,
                    "cache_write_1h": args.cache_write_1h,
                    "cache_read": args.cache_read,
                },
                actor=CLI,
                valid_from=args.valid_from,
                valid_until=args.valid_until,
                tiers=[_tier(text) for text in args.tier],
                units=dict(_pair(text, "--unit") for text in args.unit),
            )
            until = row.valid_until.isoformat() if row.valid_until else "open-ended"
            print(
                f"price override for {row.provider}/{row.model} set, "
                f"from {row.valid_from.isoformat()} until {until}"
            )
        else:
            count = overrides.unset_override(
                session,
                provider=args.provider,
                model=args.model,
                actor=CLI,
                valid_from=args.valid_from,
            )
            print(f"{count} price override(s) for {args.provider}/{args.model} removed")
    return 0


def cmd_reprice(args: argparse.Namespace, settings: Settings) -> int:
    from tokenledger.ledger.reprice import Selection, reprice

    database = _database(settings)
    try:
        _require_migrated(database)
        selection = Selection(
            unpriced=args.unpriced,
            provider=args.provider,
            model=args.model,
            start=args.start,
            end=args.end,
        )
        # In chunks, each its own transaction (retried when it loses a deadlock): a run
        # cut short is finished by running it again.
        outcome = reprice(
            database,
            selection,
            settings=settings,
            now=utcnow(),
            dry_run=args.dry_run,
            actor=CLI,
        ).render()
    finally:
        database.dispose()
    head = "dry run, nothing changed: " if args.dry_run else ""
    print(
        f"{head}{outcome['changed']} of {outcome['examined']} events of {outcome['selection']} "
        f"{'would change' if args.dry_run else 'repriced'}"
    )
    for org in outcome["organizations"]:
        before, after = org["before"], org["after"]
        print(
            f"  {org['organization']}: {org['events']} events, "
            f"{before['cost_usd']} -> {after['cost_usd']} USD, "
            f"{before['credits']} -> {after['credits']} credits, "
            f"unpriced {before['unpriced_events']} -> {after['unpriced_events']}"
        )
    before, after = outcome["before"], outcome["after"]
    print(
        f"total: {before['cost_usd']} -> {after['cost_usd']} USD, "
        f"unpriced {before['unpriced_events']} -> {after['unpriced_events']}"
    )
    return 0


def cmd_provider_sync(args: argparse.Namespace, settings: Settings) -> int:
    from tokenledger.provider_reports.commands import provider_sync

    database = _database(settings)
    _require_migrated(database)
    try:
        return provider_sync(database, settings, args.provider, args.start, args.end)
    finally:
        database.dispose()


def _instant(text: str) -> datetime:
    """An ISO 8601 date or time; a date means its midnight UTC, a time without zone UTC."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date or time: {text!r}") from exc
    try:
        return check_instant(value if value.tzinfo is not None else value.replace(tzinfo=UTC))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from exc


def _pair(text: str, option: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise CliError(f"{option} takes NAME=VALUE, not {text!r}")
    return name.strip(), value.strip()


def _tier(text: str) -> dict[str, Any]:
    """'200000:input=6,output=22.5' as a tier of prompts above 200000 tokens."""
    start, sep, rates = text.partition(":")
    if not sep or not start.strip().isdigit():
        raise CliError(f"--tier takes PROMPT_TOKENS:RATE=USD,..., not {text!r}")
    tier: dict[str, Any] = {"above_prompt_tokens": int(start)}
    for part in rates.split(","):
        name, value = _pair(part, "--tier")
        tier[name.replace("-", "_")] = value
    return tier


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenledger", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="bring the database to the newest schema").set_defaults(
        handler=cmd_migrate
    )

    for name, handler, help_text in (
        ("serve", cmd_serve, "serve the API and the admin UI"),
        ("run-local", cmd_run_local, "migrate, create the first admin, load demo data, serve"),
    ):
        serve = sub.add_parser(name, help=help_text)
        serve.add_argument("--host", default="127.0.0.1")
        serve.add_argument("--port", type=int, default=8000)
        serve.add_argument("--workers", type=int, default=1)
        serve.set_defaults(handler=handler)

    admin = sub.add_parser("create-admin", help="create an admin user")
    admin.add_argument("--email", required=True)
    password = admin.add_mutually_exclusive_group(required=True)
    password.add_argument("--password")
    password.add_argument("--password-stdin", action="store_true")
    admin.add_argument("--role", choices=["admin", "viewer"], default="admin")
    admin.set_defaults(handler=cmd_create_admin)

    keys = sub.add_parser("api-key", help="manage ingest keys").add_subparsers(
        dest="key_command", required=True
    )
    create = keys.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True)
    create.add_argument("--org", help="organization slug; without it, a service key")
    create.set_defaults(handler=cmd_api_key_create)
    keys.add_parser("list", help="list keys").set_defaults(handler=cmd_api_key_list)
    revoke = keys.add_parser("revoke", help="revoke a key")
    revoke.add_argument("id", type=int)
    revoke.set_defaults(handler=cmd_api_key_revoke)

    sub.add_parser("demo-data", help="load demo organizations and usage").set_defaults(
        handler=cmd_demo_data
    )

    reconcile = sub.add_parser("reconcile", help="recompute rollups and balances from events")
    reconcile.add_argument("--fix", action="store_true")
    reconcile.set_defaults(handler=cmd_reconcile)

    reprice = sub.add_parser(
        "reprice", help="price stored events again with the prices now in force at their times"
    )
    which = reprice.add_mutually_exclusive_group(required=True)
    which.add_argument("--unpriced", action="store_true", help="unpriced and partially priced")
    which.add_argument("--model", help="this model's events (with --from and --to)")
    reprice.add_argument("--provider", help="with --model: only this provider's")
    reprice.add_argument("--from", dest="start", type=_instant, help="first event time")
    reprice.add_argument("--to", dest="end", type=_instant, help="end, exclusive")
    reprice.add_argument("--dry-run", action="store_true", help="show the change per organization")
    reprice.set_defaults(handler=cmd_reprice)

    sync = sub.add_parser(
        "provider-sync", help="import a provider's usage and cost reports (UTC days)"
    )
    sync.add_argument("--provider", required=True, choices=["anthropic", "openai"])
    sync.add_argument("--from", dest="start", help="first UTC day, YYYY-MM-DD")
    sync.add_argument("--to", dest="end", help="last UTC day, YYYY-MM-DD (default: today)")
    sync.set_defaults(handler=cmd_provider_sync)

    backup = sub.add_parser(
        "backup", help="copy the SQLite database while it serves (PostgreSQL: pg_dump)"
    )
    backup.add_argument("path", help="the new file to write")
    backup.set_defaults(handler=cmd_backup)

    prices = sub.add_parser("prices", help="operator price overrides").add_subparsers(
        dest="prices_command", required=True
    )
    prices.add_parser("list", help="list overrides").set_defaults(handler=cmd_prices)
    price_set = prices.add_parser("set", help="set an override (USD per million tokens)")
    price_unset = prices.add_parser("unset", help="remove an override")
    for command in (price_set, price_unset):
        command.add_argument("--provider", default="anthropic")
        command.add_argument("--model", required=True)
        command.set_defaults(handler=cmd_prices)
    price_set.add_argument("--input", required=True)
    price_set.add_argument("--output", required=True)
    price_set.add_argument("--cache-write-5m")
    price_set.add_argument("--cache-write-1h")
    price_set.add_argument("--cache-read")
    price_set.add_argument(
        "--valid-from", type=_instant, help="first event time it prices (default: now)"
    )
    price_set.add_argument("--valid-until", type=_instant, help="end of its validity, exclusive")
    price_set.add_argument(
        "--tier",
        action="append",
        default=[],
        metavar="PROMPT_TOKENS:RATE=USD,...",
        help="long-context tier, e.g. 200000:input=6,output=22.5,cache_read=0.6 (repeatable)",
    )
    price_set.add_argument(
        "--unit",
        action="append",
        default=[],
        metavar="PRICE_KEY=USD",
        help="a further unit per 1000, e.g. requests_kcount=1.5 (repeatable)",
    )
    price_unset.add_argument(
        "--valid-from", type=_instant, help="only the override starting then (default: all)"
    )
    return parser


# PostgreSQL's SQLSTATEs of a lost or refused connection: class 08 (connection exception),
# and the server shutting down or starting up.
_CONNECTION_STATES = ("08", "57P01", "57P02", "57P03")


def _unreachable(exc: OperationalError) -> bool:
    """Whether the database could not be reached at all, as opposed to an error inside it
    (a deadlock, a lock timeout, a locked SQLite file, a missing table), which DBAPIs also
    call OperationalError."""
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    if type(orig).__module__.startswith("psycopg"):
        state = getattr(orig, "sqlstate", None)
        # A connection that never opened has no SQLSTATE.
        return state is None or state.startswith(_CONNECTION_STATES)
    return "unable to open database file" in str(orig)


# Commands whose writes are one transaction (reprice: chunks that a new run finishes).
_ONE_TRANSACTION = frozenset(
    {
        cmd_create_admin,
        cmd_api_key_create,
        cmd_api_key_revoke,
        cmd_demo_data,
        cmd_reconcile,
        cmd_prices,
        cmd_reprice,
    }
)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace, Settings], int] = args.handler
    try:
        settings = get_settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        print(
            f"tokenledger: configuration TOKENLEDGER_{where.upper()}: {first['msg']}",
            file=sys.stderr,
        )
        return 1
    try:
        if handler in _ONE_TRANSACTION:
            # Its transaction lost a deadlock (PostgreSQL, a server writing meanwhile) and
            # was rolled back whole: the command runs again.
            return retrying(lambda: handler(args, settings))
        return handler(args, settings)
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        what = "database unreachable" if _unreachable(exc) else "database error"
        print(f"tokenledger: {what}: {reason}", file=sys.stderr)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        print(f"tokenledger: database error: {reason}", file=sys.stderr)
    except (CliError, DomainError) as exc:
        print(f"tokenledger: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
