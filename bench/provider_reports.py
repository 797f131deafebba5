"""`make bench`, provider bills: a 31-day sync of 1,000 keys x 20 models and the comparison
route over a year of imported days.

The Anthropic SDK reads from a stand-in (bench/provider_standin.py, its own process) that
generates the report pages on the fly; the sync runs in this process, on SQLite in a
temporary directory, and its resident memory is sampled every 50 ms. Then a year of days
(10 keys x 20 models) is synced, a year of ledger events (BENCH_LEDGER_EVENTS, default
100,000) is ingested over the API, and the comparison route is timed in process.

Environment: BENCH_KEYS (1000), BENCH_MODELS (20), BENCH_DAYS (31), BENCH_TAG,
BENCH_AGAIN=1 (sync the month a second time: every day replaced). `make bench-provider-reports`
runs the full size; `make bench` a tenth of the keys (62,000 rows) and 20,000 ledger events.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from fastapi.testclient import TestClient  # noqa: E402

from tokenledger.app import create_app  # noqa: E402
from tokenledger.auth.models import AdminUser  # noqa: E402
from tokenledger.auth.service import create_api_key  # noqa: E402
from tokenledger.auth.tokens import issue_token  # noqa: E402
from tokenledger.config import Settings  # noqa: E402
from tokenledger.db import Database  # noqa: E402
from tokenledger.migrations import runner  # noqa: E402
from tokenledger.organizations import service as organizations  # noqa: E402
from tokenledger.organizations.schemas import OrganizationCreate  # noqa: E402
from tokenledger.provider_reports import service  # noqa: E402

KEYS = int(os.environ.get("BENCH_KEYS", "1000"))
MODELS = int(os.environ.get("BENCH_MODELS", "20"))
DAYS = int(os.environ.get("BENCH_DAYS", "31"))
LEDGER_EVENTS = int(os.environ.get("BENCH_LEDGER_EVENTS", "100000"))
SECRET = "bench-secret-key-0123456789-abcdefghijklmnop"
ADMIN_KEY = "sk-ant-admin01-bench"
NOW = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def calibration_ms() -> float:
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        sum(range(10**6))
        best = min(best, time.perf_counter() - started)
    return best * 1000


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class Sampler:
    """The process's resident memory every 50 ms while a block runs."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(rss_mib())
            self._stop.wait(0.05)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def standin(keys: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(HERE / "provider_standin.py"), str(port), str(keys), str(MODELS)]
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(
                f"{url}/v1/organizations/analytics/usage?starting_at=2026-01-01T00:00:00%2B00:00&ending_at=2026-01-01T00:00:00%2B00:00",
                timeout=1,
            )
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    return process, url


def timed_sync(database: Database, settings: Settings, first: date, last: date) -> dict[str, Any]:
    client = service.sdk_client(settings, "anthropic")
    before = rss_mib()
    load = os.getloadavg()[0]
    started = time.perf_counter()
    cpu = time.process_time()
    with Sampler() as sampler:
        result = service.sync(
            database, settings, "anthropic", first, last, NOW, actor="bench", client=client
        )
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu
    client.close()
    return {
        "days": result.days,
        "report_rows": result.rows,
        "seconds": round(seconds, 1),
        "rows_per_second": round(result.rows / seconds),
        # this process's CPU time, all its threads (the stand-in's is its own): what the
        # sync costs whatever else the shared machine runs
        "cpu_seconds": round(cpu_seconds, 1),
        "load_average_before": round(load, 1),
        "load_average_after": round(os.getloadavg()[0], 1),
        "rss_before_mib": round(before, 1),
        "rss_peak_mib": round(max(sampler.samples), 1),
        "rss_growth_mib": round(max(sampler.samples) - before, 1),
        # resident memory at each tenth of the run: flat means the pages are streamed
        "rss_profile_mib": [
            round(sampler.samples[i * len(sampler.samples) // 10], 1) for i in range(10)
        ],
    }


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="bench-provider-"))
    figures: dict[str, Any] = {
        "keys": KEYS,
        "models": MODELS,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        # this machine's speed beside others': best of 5 of sum(range(10**6)), in ms
        "calibration_ms": round(calibration_ms(), 1),
    }
    process, url = standin(KEYS)
    try:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            database_url=f"sqlite:///{home / 'bench.db'}",
            secret_key=SECRET,
            webhook_worker=False,
            anthropic_admin_key=ADMIN_KEY,
            anthropic_base_url=url,
        )
        database = Database(settings)
        runner.upgrade(database.engine)
        last = NOW.date() - timedelta(days=1)
        first = last - timedelta(days=DAYS - 1)
        figures["month_sync"] = timed_sync(database, settings, first, last)
        print("31-day sync:", json.dumps(figures["month_sync"]), flush=True)
        if os.environ.get("BENCH_AGAIN") == "1":
            figures["month_sync_again"] = timed_sync(database, settings, first, last)
            print("the same again (replaces):", json.dumps(figures["month_sync_again"]))
    finally:
        process.terminate()
        process.wait()
    # A year of imported days, 10 keys x 20 models, in a database of its own.
    process, url = standin(10)
    try:
        settings = settings.model_copy(
            update={"database_url": f"sqlite:///{home / 'year.db'}", "anthropic_base_url": url}
        )
        database = Database(settings)
        runner.upgrade(database.engine)
        last = NOW.date() - timedelta(days=1)
        first = last - timedelta(days=364)
        figures["year_sync"] = timed_sync(database, settings, first, last)
        print("year sync:", json.dumps(figures["year_sync"]), flush=True)
    finally:
        process.terminate()
        process.wait()
    figures["comparison"] = comparison_figures(database, settings, first, last)
    print("comparison:", json.dumps(figures["comparison"]), flush=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    out = HERE / "results" / f"{stamp}-provider-reports{os.environ.get('BENCH_TAG', '')}.json"
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"written to {out}")


def comparison_figures(
    database: Database, settings: Settings, first: date, last: date
) -> dict[str, Any]:
    with database.session(write=True) as session:
        org = organizations.create(
            session, OrganizationCreate(name="Bench", slug="bench"), actor=None
        )
        _key, secret = create_api_key(session, "bench", None, actor=None)
        user = AdminUser(email="bench@example.com", password_hash="x", role="admin")
        session.add(user)
        session.flush()
        user_id, org_id = user.id, org.id
    token, _claims = issue_token(SECRET, user_id, 600)
    admin = {"Authorization": f"Bearer {token}"}
    ingest = {"Authorization": f"Bearer {secret}"}
    app = create_app(settings, clock=lambda: NOW)
    seconds_in_year = 365 * 86_400
    with TestClient(app) as client:
        loaded = time.perf_counter()
        for batch in range(LEDGER_EVENTS // 1000):
            events = []
            for n in range(1000):
                index = batch * 1000 + n
                at = datetime.combine(first, datetime.min.time(), UTC) + timedelta(
                    seconds=index * seconds_in_year // LEDGER_EVENTS
                )
                events.append(
                    {
                        "id": f"ev-{index}",
                        "organization": "bench",
                        "provider": "anthropic",
                        "model": f"claude-bench-{index % MODELS:02d}",
                        "timestamp": at.isoformat(),
                        "input_tokens": 10_000,
                        "output_tokens": 500,
                        "cost_usd": "0.0375",
                    }
                )
            answer = client.post("/api/v1/usage", json={"events": events}, headers=ingest)
            assert answer.status_code == 200, answer.text
        load_seconds = time.perf_counter() - loaded
        results: dict[str, Any] = {
            "ledger_events": LEDGER_EVENTS,
            "ledger_load_seconds": round(load_seconds, 1),
        }
        client.put(
            "/api/provider-reports/accounts/anthropic/api_key/apikey_0003",
            json={"organization_id": org_id},
            headers=admin,
        )
        for name, params in (
            ("year_all_accounts", {}),
            ("year_one_organization", {"organization_id": org_id}),
            ("month_all_accounts", {"from": (last - timedelta(days=29)).isoformat()}),
        ):
            query = {"provider": "anthropic", "from": first.isoformat(), "to": last.isoformat()}
            query.update({k: str(v) for k, v in params.items()})
            times = []
            cpu_times = []
            rows = 0
            for attempt in range(13):
                started = time.perf_counter()
                cpu = time.process_time()  # every thread of this process: the app's too
                answer = client.get("/api/provider-reports/comparison", params=query, headers=admin)
                elapsed = time.perf_counter() - started
                cpu_ms = (time.process_time() - cpu) * 1000
                assert answer.status_code == 200, answer.text
                rows = len(answer.json()["rows"])
                if attempt == 0:
                    first_ms = elapsed * 1000  # every row rendered (none kept yet)
                if attempt >= 3:  # warm-up
                    times.append(elapsed * 1000)
                    cpu_times.append(cpu_ms)
            times.sort()
            cpu_times.sort()
            results[name] = {
                "rows": rows,
                "first_ms": round(first_ms, 1),
                "p50_ms": round(statistics.median(times), 1),
                "p95_ms": round(times[int(len(times) * 0.95) - 1], 1),
                "cpu_p50_ms": round(statistics.median(cpu_times), 1),
                "cpu_p95_ms": round(cpu_times[int(len(cpu_times) * 0.95) - 1], 1),
            }
    return results


if __name__ == "__main__":
    main()
