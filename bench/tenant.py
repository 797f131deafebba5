"""`make bench` (and `make bench-tenant`): the tenant's summary and portal as one
organization's history grows from 10 thousand to 10 million events.

Issue 18's targets: GET /api/v1/usage/summary p99 at most 5 ms at 4 connections, flat with
the number of events (it reads rollups only), and the portal page in at most 50 ms p95 for
an organization with a year of history. Each size is measured in one run of the server,
beside GET /healthz (the same middleware and nothing else: the noise baseline of a shared
machine) and GET /api/v1/budget (the budget check the summary shares its path with).

The events (a year of days, three models, the last an hour ago) are bulk-loaded with SQL
into one organization's rows, with their rollups, as ingestion writes them
(bench/ingest.py's bulk_load).

Environment:
  BENCH_TENANT_SIZES    event counts to measure at, comma-separated (default
                        10000,10000000; the 10 million take 3 to 5 minutes to load and
                        about 2 GB in a temporary directory)
  BENCH_SECONDS         seconds of each wrk run (default 8)
  BENCH_TAG             appended to the result file's name
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ingest  # the bench module beside this file

SIZES = [int(n) for n in os.environ.get("BENCH_TENANT_SIZES", "10000,10000000").split(",")]
# A few organizations beside the measured one, so the hot cache holds more than one.
ORGS = 20
ORG = ingest.slug(1)
PORTAL_GETS = 200


def portal_gets(url: str) -> dict[str, float]:
    """The portal page, one connection, PORTAL_GETS times: p50, p95 and p99."""
    import time

    import httpx

    latencies = []
    with httpx.Client(timeout=120) as client:
        client.get(url).raise_for_status()
        for _ in range(PORTAL_GETS):
            sent = time.perf_counter()
            client.get(url).raise_for_status()
            latencies.append(time.perf_counter() - sent)
    ordered = sorted(latencies)

    def at(share: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(len(ordered) * share))] * 1000, 2)

    return {"p50_ms": at(0.5), "p95_ms": at(0.95), "p99_ms": at(0.99)}


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def portal_link(server: ingest.Server, ledger: ingest.Ledger) -> str:
    """The path of a portal link of the measured organization (valid 24 hours: made once,
    while the admin token of prepare_ledger is young)."""
    created = ingest.httpx.post(
        f"{server.base}/api/organizations/{ledger.org_ids[ORG]}/portal-links",
        headers=ingest.bearer(ledger.admin_token),
        timeout=30,
    )
    created.raise_for_status()
    url: str = created.json()["url"]
    return "/portal/" + url.split("/portal/", 1)[1]


def measure(server: ingest.Server, ledger: ingest.Ledger, portal: str) -> dict[str, Any]:
    """/healthz, the budget check and the summary at 4 connections; the portal page (its
    path: portal_link)."""
    seconds = ingest.SECONDS
    query = f"organization={ORG}"
    figures: dict[str, Any] = {}
    for name, path, key in (
        ("healthz", "/healthz", ""),
        ("budget", f"/api/v1/budget?{query}", ledger.key),
        ("summary", f"/api/v1/usage/summary?{query}", ledger.key),
    ):
        # A short warm-up (imports, caches, the statement cache), then the measured run.
        ingest.wrk(f"{server.base}{path}", ingest.WRK_GET, [key], 4, 1)
        before = cpu_seconds(server.process.pid)
        load = ingest.wrk(f"{server.base}{path}", ingest.WRK_GET, [key], 4, seconds)
        used = cpu_seconds(server.process.pid) - before
        figures[name] = {
            **load.as_dict(),
            # The server's CPU per request: what decides its latency on a quiet machine,
            # and far steadier than latency on a busy one.
            "server_cpu_us": round(used / (load.per_second * seconds) * 1e6),
        }
    healthz = figures["healthz"]["p99_ms"]
    for name in ("budget", "summary"):
        figures[name]["p99_vs_healthz"] = round(figures[name]["p99_ms"] / healthz, 2)
    figures["portal_page"] = portal_gets(f"{server.base}{portal}")
    return figures


def run(workdir: Path) -> dict[str, Any]:
    url = f"sqlite:///{workdir}/ledger.db"
    ledger = ingest.prepare_ledger(url, orgs=ORGS)
    path = ingest.sqlite_path(url)
    # The newest event an hour ago, so that this month and the forecast's week have usage.
    latest = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    result: dict[str, Any] = {}
    portal = ""
    loaded = 0
    for size in sorted(SIZES):
        seconds = ingest.bulk_load(
            path, size - loaded, ledger.org_ids[ORG], f"t{size}", latest=latest
        )
        loaded = size
        with sqlite3.connect(path) as db:
            db.execute("ANALYZE")
            events = db.execute("SELECT count(*) FROM usage_events").fetchone()[0]
        with ingest.ledger_server(url) as server:
            portal = portal or portal_link(server, ledger)
            figures = measure(server, ledger, portal)
        result[f"events_{size}"] = {"events": events, "load_seconds": round(seconds, 1), **figures}
    return result


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{'events':>11} {'route (4 conns)':<24} {'per second':>11} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'p99/healthz':>12} {'server CPU us':>14}"
    ]
    for entry in result.values():
        for name in ("healthz", "budget", "summary"):
            load = entry[name]
            lines.append(
                f"{entry['events']:>11,} {name:<24} {load['per_second']:>11,.0f} "
                f"{load['p50_ms']:>8.2f} {load['p99_ms']:>8.2f} "
                f"{load.get('p99_vs_healthz', 1):>11.2f}x {load['server_cpu_us']:>14,}"
            )
        portal = entry["portal_page"]
        lines.append(
            f"{entry['events']:>11,} {'portal page (1 conn)':<24} {'':>11} "
            f"{portal['p50_ms']:>8.2f} {portal['p99_ms']:>8.2f}   p95 {portal['p95_ms']:.2f}"
        )
    return "\n".join(lines)


def main() -> int:
    load = os.getloadavg()
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in load],
        "seconds_per_load": ingest.SECONDS,
    }
    with tempfile.TemporaryDirectory() as tmp:
        report["sqlite"] = run(Path(tmp))
    print(f"Tenant summary and portal, SQLite, one worker (load average at start {load[0]:.2f}):")
    print(table(report["sqlite"]))
    results = ingest.HERE / "results"
    results.mkdir(exist_ok=True)
    tag = os.environ.get("BENCH_TAG", "")
    out = results / f"{datetime.now(UTC).date().isoformat()}-tenant{tag}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {out.relative_to(ingest.HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
