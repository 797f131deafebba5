"""`make bench`: the write and read paths over HTTP, each beside a floor from the same run.

Both servers run as real uvicorn processes on loopback. The floor (floor_app.py) is a bare
FastAPI + pydantic + SQLite app with async handlers, WAL and synchronous=FULL: what the web
stack and SQLite cost with nothing of the ledger. Single events are sent with wrk (one new
id per request), batches with one httpx connection, reads with wrk or httpx; every load is
bounded in count and time.

Events for the growth and read figures are bulk-loaded with SQL straight into the database
(not over HTTP), with their rollups added by SQL as ingestion adds them.

Environment:
  BENCH_EVENTS         events bulk-loaded before the read figures (default 10,000,000:
                       about 2 GB in a temporary directory, 3 to 4 minutes to load)
  BENCH_EXPORT_EVENTS  events of the organization whose CSV is exported (default 1,000,000)
  BENCH_SECONDS        seconds of each wrk run (default 8)
  BENCH_POSTGRES=1     also run the ingestion figures on PostgreSQL with 1 and 2 workers
                       (needs TOKENLEDGER_TEST_POSTGRES_URL: scripts/with-postgres.sh)
  BENCH_SQLITE=0       skip the SQLite run (e.g. for a PostgreSQL run alone)
  BENCH_TAG            appended to the result file's name (bench/results/<date><tag>.json)
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
WRK = shutil.which("wrk") or "/usr/bin/wrk"
SECRET = "bench-secret-key-0123456789-abcdefghijklmnop"
ORGS = 1000
EVENTS = int(os.environ.get("BENCH_EVENTS", "10000000"))
EXPORT_EVENTS = int(os.environ.get("BENCH_EXPORT_EVENTS", "1000000"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "8"))
MODELS = ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1")


def slug(n: int) -> str:
    return f"o{n:04d}"


# --- processes -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready")


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (uvicorn's workers), in MiB."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    total = 0
    for one in pids:
        for line in Path(f"/proc/{one}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base: str

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextmanager
def floor_server(workdir: Path) -> Iterator[Server]:
    port = free_port()
    env = {**os.environ, "FLOOR_DB": str(workdir / "floor.db")}
    process = subprocess.Popen(
        [PYTHON, "-m", "uvicorn", "floor_app:app", "--app-dir", str(HERE), "--port", str(port),
         "--log-level", "warning", "--no-access-log"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    server = Server(process, f"http://127.0.0.1:{port}")
    try:
        wait_ready(f"{server.base}/healthz")
        yield server
    finally:
        server.stop()


def ledger_env(database_url: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOKENLEDGER_")},
        "TOKENLEDGER_DATABASE_URL": database_url,
        "TOKENLEDGER_SECRET_KEY": SECRET,
        "TOKENLEDGER_WEBHOOK_WORKER": "false",
        "TOKENLEDGER_BACKFILL_MAX_AGE_DAYS": "4000",
    }


LOG = Path(tempfile.gettempdir()) / "tokenledger-bench-server.log"


@contextmanager
def ledger_server(database_url: str, workers: int = 1) -> Iterator[Server]:
    """`tokenledger serve`; its errors go to LOG (access log lines are dropped there too)."""
    port = free_port()
    log = LOG.open("ab")
    process = subprocess.Popen(
        [PYTHON, "-m", "tokenledger.cli", "serve", "--port", str(port), "--workers",
         str(workers)],
        env=ledger_env(database_url), stdout=subprocess.DEVNULL, stderr=log,
    )
    log.close()
    server = Server(process, f"http://127.0.0.1:{port}")
    try:
        wait_ready(f"{server.base}/readyz")
        yield server
    finally:
        server.stop()


# --- the ledger's database -----------------------------------------------------------


@dataclass
class Ledger:
    url: str
    key: str
    admin_token: str
    org_ids: dict[str, int] = field(default_factory=dict)


def prepare_ledger(database_url: str, orgs: int = ORGS) -> Ledger:
    """Migrate, then `orgs` organizations with a license each, a service key and an admin."""
    setup = textwrap.dedent(
        """
        import json, sys
        from datetime import UTC, datetime
        from decimal import Decimal
        from tokenledger.auth.models import AdminUser
        from tokenledger.auth.service import create_api_key
        from tokenledger.auth.tokens import issue_token
        from tokenledger.config import Settings
        from tokenledger.db import Database
        from tokenledger.licenses.schemas import LicenseCreate
        from tokenledger.licenses.service import create as create_license
        from tokenledger.migrations import runner
        from tokenledger.organizations.schemas import OrganizationCreate
        from tokenledger.organizations.service import create as create_org

        settings = Settings()
        database = Database(settings)
        runner.upgrade(database.engine)
        org_ids = {}
        with database.session(write=True) as session:
            for n in range(1, %(orgs)d + 1):
                org = create_org(session, OrganizationCreate(name=f"Org {n}", slug=f"o{n:04d}"), actor=None)
                org_ids[org.slug] = org.id
                create_license(session, LicenseCreate(
                    organization_id=org.id, credits_total=Decimal(10**9),
                    cost_per_credit=Decimal("0.01"), token_budget_usd=Decimal(10**6),
                    valid_from=datetime(2015, 1, 1, tzinfo=UTC)), datetime.now(UTC), actor=None)
            _key, secret = create_api_key(session, "bench", None, actor=None)
            admin = AdminUser(email="bench@example.com", password_hash="x", role="admin")
            session.add(admin)
            session.flush()
            admin_id = admin.id
        token, _ = issue_token(settings.signing_key(), admin_id, 600)
        json.dump({"key": secret, "token": token, "orgs": org_ids}, sys.stdout)
        """
    ) % {"orgs": orgs}
    out = subprocess.run(
        [PYTHON, "-c", setup], env=ledger_env(database_url), check=True, capture_output=True,
        text=True,
    ).stdout
    data = json.loads(out)
    return Ledger(database_url, data["key"], data["token"], data["orgs"])


def sqlite_path(url: str) -> Path:
    return Path(url.split(":///", 1)[1])


def table_bytes(path: Path) -> int:
    """Bytes in use in the database file: pages in use times the page size."""
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        size = db.execute("PRAGMA page_size").fetchone()[0]
    return int((pages - free) * size)


# The newest instant of bulk-loaded events (by default).
BULK_LATEST = datetime(2026, 11, 20, 12, tzinfo=UTC)


def bulk_load(
    path: Path, count: int, org_id: int | None, prefix: str, latest: datetime = BULK_LATEST
) -> float:
    """Insert `count` priced events with SQL: over every organization (or one), a year of
    days up to `latest` and three models, and add them to the rollups; returns seconds."""
    started = time.perf_counter()
    org_expr = f"{org_id}" if org_id is not None else f"1 + (n % {ORGS})"
    with sqlite3.connect(path, isolation_level=None) as db:
        db.execute("PRAGMA synchronous=OFF")
        # The events' indexes in memory while they grow: with SQLite's default 2 MiB page
        # cache, ten million events took 8 minutes instead of 3.5 on the 2-core machine.
        db.execute("PRAGMA cache_size=-2000000")
        db.execute("BEGIN")
        price_ids = bulk_prices(db)
        first = db.execute("SELECT coalesce(max(id), 0) + 1 FROM usage_events").fetchone()[0]
        db.execute(
            bulk_sql(org_expr, prefix, price_ids),
            {"count": count, "latest": int(latest.timestamp())},
        )
        for statement in ROLLUP_SQL:
            db.execute(statement, {"first": first})
        db.execute("COMMIT")
    return time.perf_counter() - started


_SUMS = (
    "sum(input_tokens), sum(output_tokens), sum(cache_creation_input_tokens), "
    "sum(cache_read_input_tokens), sum(coalesce(cost_nano, 0)), sum(api_calls), count(*), "
    "sum(cost_nano IS NULL)"
)
_ADDED = ", ".join(
    f"{name} = {name} + excluded.{name}"
    for name in ("input_tokens", "output_tokens", "cache_creation_tokens", "cache_read_tokens",
                 "cost_nano", "api_calls", "event_count", "unpriced_events")
)
_ROLLUP_COLUMNS = (
    "input_tokens, output_tokens, cache_creation_tokens, cache_read_tokens, cost_nano, "
    "api_calls, event_count, unpriced_events"
)
# The rollups of the events just loaded (ids from :first), as ingestion would have added
# them (`tokenledger reconcile` recomputes the same from the events).
ROLLUP_SQL = (
    f"INSERT INTO token_usage_monthly (organization_id, year_month, {_ROLLUP_COLUMNS}, "
    f"refresh_count) SELECT organization_id, year_month, {_SUMS}, 0 FROM usage_events "
    f"WHERE id >= :first GROUP BY 1, 2 ON CONFLICT DO UPDATE SET {_ADDED}",
    f"INSERT INTO usage_daily (organization_id, day, provider, model, {_ROLLUP_COLUMNS}) "
    f"SELECT e.organization_id, e.day, p.provider, p.model, {_SUMS} FROM usage_events AS e "
    "JOIN usage_prices AS p ON p.id = e.price_id WHERE e.id >= :first GROUP BY 1, 2, 3, 4 "
    f"ON CONFLICT DO UPDATE SET {_ADDED}",
    "INSERT INTO usage_utc_daily (organization_id, day, provider, model, uncached_input_tokens, "
    "cache_write_5m_tokens, cache_write_1h_tokens, cache_read_tokens, output_tokens, cost_nano, "
    "event_count, unpriced_events) SELECT e.organization_id, "
    "date(e.timestamp / 1000000, 'unixepoch'), p.provider, p.model, sum(e.input_tokens), "
    "sum(e.cache_creation_input_tokens - e.cache_write_1h_tokens), sum(e.cache_write_1h_tokens), "
    "sum(e.cache_read_input_tokens), sum(e.output_tokens), sum(coalesce(e.cost_nano, 0)), "
    "count(*), sum(e.cost_nano IS NULL) FROM usage_events AS e JOIN usage_prices AS p "
    "ON p.id = e.price_id WHERE e.id >= :first GROUP BY 1, 2, 3, 4 ON CONFLICT DO UPDATE SET "
    + ", ".join(
        f"{name} = {name} + excluded.{name}"
        for name in ("uncached_input_tokens", "cache_write_5m_tokens", "cache_write_1h_tokens",
                     "cache_read_tokens", "output_tokens", "cost_nano", "event_count",
                     "unpriced_events")
    ),
    "INSERT INTO license_usage (license_id, year_month, cost_nano, credits_micro, event_count) "
    "SELECT license_id, year_month, sum(coalesce(cost_nano, 0)), "
    "sum(coalesce(credits_micro, 0)), count(*) FROM usage_events WHERE id >= :first "
    "AND license_id IS NOT NULL GROUP BY 1, 2 ON CONFLICT DO UPDATE SET "
    "cost_nano = cost_nano + excluded.cost_nano, "
    "credits_micro = credits_micro + excluded.credits_micro, "
    "event_count = event_count + excluded.event_count",
    "UPDATE licenses SET credits_used_micro = credits_used_micro + t.credits FROM (SELECT "
    "license_id, sum(coalesce(credits_micro, 0)) AS credits FROM usage_events WHERE "
    "id >= :first AND license_id IS NOT NULL GROUP BY 1) AS t WHERE licenses.id = t.license_id",
)


BULK_RATES = {
    "claude-sonnet-4-5": ("3", "15", "3.75", "6", "0.3"),
    "claude-haiku-4-5": ("1", "5", "1.25", "2", "0.1"),
    "claude-opus-4-1": ("15", "75", "18.75", "30", "1.5"),
}


def bulk_prices(db: sqlite3.Connection) -> list[int]:
    """The usage_prices rows of the three models (as ingestion stores them), their ids."""
    from tokenledger.ledger.prices import price_fingerprint
    from tokenledger.pricing.engine import LIBRARY_VERSION

    ids = []
    for model, values in BULK_RATES.items():
        names = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")
        row = {
            "provider": "anthropic", "model": model, "pricing": "priced",
            "price_source": "genai-prices", "price_version": LIBRARY_VERSION,
            "priced_model": model, "rates": dict(zip(names, values, strict=True)),
        }
        key = price_fingerprint(row)
        db.execute(
            "INSERT OR IGNORE INTO usage_prices (fingerprint, provider, model, pricing, "
            "price_source, price_version, priced_model, rates) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (key, row["provider"], model, "priced", "genai-prices", LIBRARY_VERSION, model,
             json.dumps(row["rates"])),
        )
        ids.append(db.execute("SELECT id FROM usage_prices WHERE fingerprint = ?", (key,))
                   .fetchone()[0])
    return ids


def bulk_sql(org_expr: str, prefix: str, price_ids: list[int]) -> str:
    """Rows as ingestion writes them (schema of this revision), generated in SQL."""
    return f"""
    WITH RECURSIVE seq(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n + 1 < :count),
    gen AS (
      SELECT n, {org_expr} AS org,
        :latest - (n % 365) * 86400 - (n % 86400) AS secs,
        n % 3 AS m, 500 + n % 4000 AS inp, 100 + n % 900 AS outp, (n % 5) * 1000 AS cr
      FROM seq
    ), priced AS (
      SELECT *, CASE m WHEN 0 THEN inp * 3000 + outp * 15000 + cr * 300
                       WHEN 1 THEN inp * 1000 + outp * 5000 + cr * 100
                       ELSE inp * 15000 + outp * 75000 + cr * 1500 END AS cost
      FROM gen
    )
    INSERT INTO usage_events (organization_id, external_id, content_hash, timestamp,
      received_at, year_month, day, input_tokens, output_tokens,
      cache_creation_input_tokens, cache_read_input_tokens, cache_write_1h_tokens, api_calls,
      refresh_id, reservation_id, license_id, price_id, cost_nano, credits_micro, metadata)
    SELECT org, '{prefix}-' || n, randomblob(32), secs * 1000000, secs * 1000000,
      strftime('%Y-%m', secs, 'unixepoch'), strftime('%Y-%m-%d', secs, 'unixepoch'),
      inp, outp, 0, cr, 0, 1, 'run-' || (n / 4), NULL, org,
      CASE m WHEN 0 THEN {price_ids[0]} WHEN 1 THEN {price_ids[1]} ELSE {price_ids[2]} END,
      cost, cost / 10, NULL
    FROM priced
    """


# --- load ----------------------------------------------------------------------------

WRK_SINGLE = """
local counter = 0
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end
function init(args)
  prefix = args[1] .. "-" .. tid
  path = args[2]
  orgs = tonumber(args[3])
  headers = {["Content-Type"] = "application/json"}
  if args[4] ~= nil and args[4] ~= "" then headers["Authorization"] = "Bearer " .. args[4] end
end
request = function()
  counter = counter + 1
  -- wrk's threads count from 0 each: an offset keeps them on different organizations
  -- (the same organization at the same instant would be one sender's burst, not two)
  local org = string.format("o%04d", 1 + (counter + (tid - 1) * 500) % orgs)
  local body = string.format(
    '{"events":[{"id":"%s-%d","organization":"%s","model":"claude-sonnet-4-5",'
    .. '"input_tokens":%d,"output_tokens":%d,"cache_read_input_tokens":5000,'
    .. '"refresh_id":"%s-r%d"}]}',
    prefix, counter, org, 1000 + counter % 500, 200 + counter % 50, prefix, math.floor(counter / 4))
  return wrk.format("POST", path, headers, body)
end
"""

WRK_GET = """
function init(args)
  headers = {}
  if args[1] ~= nil and args[1] ~= "" then headers["Authorization"] = "Bearer " .. args[1] end
end
request = function() return wrk.format("GET", nil, headers, nil) end
"""

WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"socket_errors":%d,"non_2xx":%d,'
    .. '"p50_us":%d,"p99_us":%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class Load:
    per_second: float
    p50_ms: float
    p99_ms: float
    errors: int = 0

    def as_dict(self) -> dict[str, float]:
        return {
            "per_second": round(self.per_second, 1),
            "p50_ms": round(self.p50_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "errors": self.errors,
        }


def wrk(url: str, script: str, args: list[str], connections: int, seconds: int) -> Load:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script + WRK_DONE)
        lua = handle.name
    try:
        threads = min(2, connections)
        out = subprocess.run(
            [WRK, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
             "-s", lua, url, "--", *args],
            capture_output=True, text=True, check=True, timeout=seconds + 60,
        ).stdout
    finally:
        os.unlink(lua)
    line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
    data = json.loads(line.split(" ", 1)[1])
    return Load(
        per_second=data["requests"] / (data["duration_us"] / 1e6),
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors=data["socket_errors"] + data["non_2xx"],
    )


def single_events(base: str, path: str, key: str, connections: int, prefix: str) -> Load:
    return wrk(
        f"{base}{path}", WRK_SINGLE, [prefix, path, str(ORGS), key], connections, SECONDS
    )


def batches(count: int, size: int, orgs: int, prefix: str) -> list[bytes]:
    """Batches of `size` events; over `orgs` organizations, three models and 60 days."""
    bodies = []
    for b in range(count):
        events = []
        for i in range(size):
            n = b * size + i
            org = slug(1 + (n * 7919) % orgs) if orgs > 1 else slug(1)
            day = 1 + n % 28
            month = 9 + n % 2
            events.append(
                {
                    "id": f"{prefix}-{b}-{i}",
                    "organization": org,
                    "model": MODELS[n % 3] if orgs > 1 else MODELS[0],
                    "timestamp": f"2026-{month:02d}-{day:02d}T{n % 24:02d}:{n % 60:02d}:00Z"
                    if orgs > 1
                    else "2026-11-02T10:00:00Z",
                    "input_tokens": 1000 + i,
                    "output_tokens": 200 + b % 50,
                    "cache_read_input_tokens": 5000,
                    "cache_creation_input_tokens": 300,
                    "refresh_id": f"r-{b}-{i // 4}",
                }
            )
        bodies.append(json.dumps({"events": events}).encode())
    return bodies


def send_batches(url: str, key: str, bodies: list[bytes], seconds: float) -> Load:
    """Events per second over one connection, batch after batch, bounded in time."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    latencies = []
    events = 0
    with httpx.Client(timeout=120, headers=headers) as client:
        client.post(url, content=bodies[0]).raise_for_status()  # warm-up, not timed
        started = time.perf_counter()
        for body in bodies[1:]:
            sent = time.perf_counter()
            response = client.post(url, content=body)
            response.raise_for_status()
            latencies.append(time.perf_counter() - sent)
            events += len(response.json()["results"])
            if time.perf_counter() - started > seconds:
                break
        elapsed = time.perf_counter() - started
    return Load(events / elapsed, *percentiles(latencies))


def percentiles(latencies: list[float]) -> tuple[float, float]:
    ordered = sorted(latencies)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return p50 * 1000, p99 * 1000


def timed_gets(url: str, headers: dict[str, str], count: int) -> Load:
    latencies = []
    with httpx.Client(timeout=120, headers=headers) as client:
        client.get(url).raise_for_status()
        started = time.perf_counter()
        for _ in range(count):
            sent = time.perf_counter()
            client.get(url).raise_for_status()
            latencies.append(time.perf_counter() - sent)
        elapsed = time.perf_counter() - started
    return Load(count / elapsed, *percentiles(latencies))


def export_csv(server: Server, ledger: Ledger, org: str) -> dict[str, float]:
    """Stream one organization's events as CSV: rows per second and the server's peak RSS."""
    org_id = ledger.org_ids[org]
    url = (
        f"{server.base}/api/token-usage/{org_id}/events.csv"
        "?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z"
    )
    before = rss_mib(server.process.pid)
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib(server.process.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    rows = size = 0
    started = time.perf_counter()
    try:
        with httpx.Client(timeout=600, headers=bearer(ledger.admin_token)) as client, \
                client.stream("GET", url) as response:
            response.raise_for_status()
            for chunk in response.iter_bytes():
                size += len(chunk)
                rows += chunk.count(b"\n")
    finally:
        done.set()
        sampler.join()
    elapsed = time.perf_counter() - started
    return {
        "rows": rows - 1,
        "rows_per_second": round((rows - 1) / elapsed),
        "mib_per_second": round(size / elapsed / 2**20, 1),
        "rss_before_mib": round(before, 1),
        "rss_peak_mib": round(peak[0], 1),
    }


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- runs ----------------------------------------------------------------------------


def group_sizes(base: str) -> dict[str, float]:
    """Requests per group commit so far, from the server's own histogram."""
    text = httpx.get(f"{base}/metrics", timeout=30).text
    values = {}
    for line in text.splitlines():
        for name in ("sum", "count"):
            if line.startswith(f"tokenledger_usage_group_requests_{name} "):
                values[name] = float(line.split()[-1])
    count = values.get("count", 0)
    return {"groups": count, "mean_requests": round(values.get("sum", 0) / count, 1) if count else 0}


def ingestion_figures(
    ledger_base: str, floor_base: str | None, key: str, tag: str
) -> dict[str, Any]:
    """Single events at 4 and 32 connections; 1000-event batches for 1 and 1,000 orgs."""
    result: dict[str, Any] = {}
    for connections in (4, 32):
        name = f"single_events_c{connections}"
        result[name] = {
            "tokenledger": single_events(
                ledger_base, "/api/v1/usage", key, connections, f"{tag}s{connections}"
            ).as_dict()
        }
        result[name]["group_sizes_so_far"] = group_sizes(ledger_base)
        if floor_base:
            result[name]["floor"] = single_events(
                floor_base, "/usage", "", connections, f"{tag}s{connections}"
            ).as_dict()
    for orgs in (1, ORGS):
        name = f"batches_1000_orgs{orgs}"
        bodies = batches(40, 1000, orgs, f"{tag}b{orgs}")
        try:
            ours = send_batches(f"{ledger_base}/api/v1/usage", key, bodies, SECONDS * 2)
        except httpx.HTTPStatusError as exc:
            result[name] = {"tokenledger_error": str(exc).splitlines()[0]}
            continue
        result[name] = {"tokenledger": ours.as_dict()}
        if floor_base:
            result[name]["floor"] = send_batches(
                f"{floor_base}/usage", "", bodies, SECONDS * 2
            ).as_dict()
    return result


def read_figures(server: Server, floor: Server, ledger: Ledger, suffix: str) -> dict[str, Any]:
    """The overview of 1,000 organizations, one organization's monthly route, /readyz."""
    headers = bearer(ledger.admin_token)
    org_id = ledger.org_ids[slug(17)]
    return {
        f"overview{suffix}": {
            "tokenledger": timed_gets(
                f"{server.base}/api/token-usage/overview", headers, 30
            ).as_dict(),
            "floor": timed_gets(f"{floor.base}/overview", {}, 30).as_dict(),
        },
        f"monthly_route{suffix}": {
            "tokenledger": timed_gets(
                f"{server.base}/api/token-usage/{org_id}", headers, 100
            ).as_dict(),
            "floor": timed_gets(f"{floor.base}/budget?organization={slug(17)}", {}, 100).as_dict(),
        },
        # The readiness probe (database reachable and migrated) beside the floor's liveness.
        f"readyz{suffix}": {
            "tokenledger": timed_gets(f"{server.base}/readyz", {}, 100).as_dict(),
            "floor": timed_gets(f"{floor.base}/healthz", {}, 100).as_dict(),
        },
    }


def run_sqlite(workdir: Path) -> dict[str, Any]:
    url = f"sqlite:///{workdir}/ledger.db"
    ledger = prepare_ledger(url)
    figures: dict[str, Any] = {}
    with floor_server(workdir) as floor, ledger_server(url) as server:
        figures.update(ingestion_figures(server.base, floor.base, ledger.key, "a"))
        figures["budget_check"] = {
            "tokenledger": wrk(
                f"{server.base}/api/v1/budget?organization={slug(17)}", WRK_GET, [ledger.key],
                4, SECONDS,
            ).as_dict(),
            "floor": wrk(
                f"{floor.base}/budget?organization={slug(17)}", WRK_GET, [""], 4, SECONDS
            ).as_dict(),
        }
        figures["rss_after_ingest_mib"] = round(rss_mib(server.process.pid), 1)
        # The read routes before the events are loaded, against the same routes after.
        figures.update(read_figures(server, floor, ledger, "_small"))

    path = sqlite_path(url)
    before = table_bytes(path)
    with sqlite3.connect(path) as db:
        events_before = db.execute("SELECT count(*) FROM usage_events").fetchone()[0]
    load_seconds = bulk_load(path, EVENTS, None, "bulk")
    export_org = slug(ORGS)
    load_seconds += bulk_load(path, EXPORT_EVENTS, ledger.org_ids[export_org], "export")
    with sqlite3.connect(path) as db:
        db.execute("ANALYZE")
    after = table_bytes(path)
    loaded = EVENTS + EXPORT_EVENTS
    figures["bulk_load"] = {"events": loaded, "seconds": round(load_seconds, 1)}
    with sqlite3.connect(path) as db:
        total_events = db.execute("SELECT count(*) FROM usage_events").fetchone()[0]
    figures["events_in_database"] = total_events
    figures["bytes_per_event"] = round((after - before) / (total_events - events_before), 1)

    with floor_server(workdir) as floor, ledger_server(url) as server:
        figures.update(read_figures(server, floor, ledger, ""))
        figures["budget_check_grown"] = {
            "tokenledger": wrk(
                f"{server.base}/api/v1/budget?organization={slug(17)}", WRK_GET, [ledger.key],
                4, SECONDS,
            ).as_dict(),
        }
        figures["single_events_c32_grown"] = {
            "tokenledger": single_events(
                server.base, "/api/v1/usage", ledger.key, 32, "grown"
            ).as_dict()
        }
        figures["rss_after_load_mib"] = round(rss_mib(server.process.pid), 1)
        figures["csv_export"] = export_csv(server, ledger, export_org)
    return figures


def run_postgres() -> dict[str, Any]:
    base_url = os.environ.get("TOKENLEDGER_TEST_POSTGRES_URL")
    if not base_url:
        raise SystemExit("BENCH_POSTGRES=1 needs TOKENLEDGER_TEST_POSTGRES_URL "
                         "(run under scripts/with-postgres.sh)")
    from sqlalchemy import create_engine, make_url, text

    figures: dict[str, Any] = {}
    for workers in (1, 2):
        name = f"tokenledger_bench_{workers}_{os.getpid()}"
        admin = create_engine(
            base_url.replace("postgresql://", "postgresql+psycopg://", 1),
            isolation_level="AUTOCOMMIT",
        )
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(base_url).set(database=name).render_as_string(hide_password=False)
        try:
            ledger = prepare_ledger(url)
            with ledger_server(url, workers) as server:
                result = ingestion_figures(server.base, None, ledger.key, f"pg{workers}")
                result["rss_after_ingest_mib"] = round(rss_mib(server.process.pid), 1)
            figures[f"workers_{workers}"] = result
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    return figures


# --- report --------------------------------------------------------------------------


def ratio(ours: float, floor: float) -> str:
    return f"{ours / floor:.2f}x" if floor else "-"


def table(figures: dict[str, Any]) -> str:
    lines = [
        f"{'figure':<34} {'tokenledger':>22} {'floor':>22} {'ratio':>7}",
        "-" * 88,
    ]

    def load_row(label: str, key: str, unit: str) -> None:
        entry = figures.get(key)
        if not entry:
            return
        if "tokenledger_error" in entry:
            lines.append(f"{label:<34} failed: {entry['tokenledger_error']}")
            return
        ours, floor = entry["tokenledger"], entry.get("floor")
        fmt = lambda d: f"{d['per_second']:,.0f}{unit} p50 {d['p50_ms']:.1f} p99 {d['p99_ms']:.1f}"  # noqa: E731
        lines.append(
            f"{label:<34} {fmt(ours):>22} {fmt(floor) if floor else '':>22} "
            f"{ratio(ours['per_second'], floor['per_second']) if floor else '':>7}"
        )
        if ours.get("errors"):
            lines.append(f"{'':<34} errors: {ours['errors']}")
        if "group_sizes_so_far" in entry:
            sizes = entry["group_sizes_so_far"]
            lines.append(
                f"{'':<34} group commits so far: {sizes['groups']:,.0f}, "
                f"{sizes['mean_requests']} requests each on average"
            )

    load_row("single events, 4 connections", "single_events_c4", "/s")
    load_row("single events, 32 connections", "single_events_c32", "/s")
    load_row("1000-event batches, 1 org", "batches_1000_orgs1", " ev/s")
    load_row("1000-event batches, 1,000 orgs", "batches_1000_orgs1000", " ev/s")
    load_row("GET /api/v1/budget (4 conns)", "budget_check", "/s")
    load_row("overview (1,000 orgs), small db", "overview_small", "/s")
    load_row("monthly route of one org, small db", "monthly_route_small", "/s")
    load_row("overview (1,000 orgs)", "overview", "/s")
    load_row("monthly route of one org", "monthly_route", "/s")
    load_row("GET /readyz (floor: /healthz)", "readyz", "/s")
    load_row("budget check, grown database", "budget_check_grown", "/s")
    load_row("single events c32, grown database", "single_events_c32_grown", "/s")
    for key, label in (
        ("rss_after_ingest_mib", "server RSS after ingest (MiB)"),
        ("rss_after_load_mib", "server RSS after reads (MiB)"),
        ("bytes_per_event", "bytes per event on disk"),
        ("events_in_database", "events in the database"),
    ):
        if key in figures:
            lines.append(f"{label:<34} {figures[key]:>22,}")
    if "csv_export" in figures:
        csv = figures["csv_export"]
        lines.append(
            f"{'CSV export':<34} {csv['rows']:,} rows, {csv['rows_per_second']:,} rows/s, "
            f"{csv['mib_per_second']} MiB/s, RSS {csv['rss_before_mib']} -> peak "
            f"{csv['rss_peak_mib']} MiB"
        )
    return "\n".join(lines)


def main() -> int:
    load = os.getloadavg()
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in load],
        "bulk_events": EVENTS,
        "export_events": EXPORT_EVENTS,
        "seconds_per_load": SECONDS,
    }
    if os.environ.get("BENCH_SQLITE") != "0":
        with tempfile.TemporaryDirectory() as tmp:
            report["sqlite"] = run_sqlite(Path(tmp))
        print(f"SQLite, one worker (load average at start {load[0]:.2f}):")
        print(table(report["sqlite"]))
    if os.environ.get("BENCH_POSTGRES") == "1":
        report["postgresql"] = run_postgres()
        for workers, figures in report["postgresql"].items():
            print(f"\nPostgreSQL, {workers.replace('_', ' ')}:")
            print(table(figures))
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    suffix = os.environ.get("BENCH_TAG", "")
    out = results / f"{datetime.now(UTC).date().isoformat()}{suffix}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {out.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
