"""`make bench-reprice`: one large repricing on SQLite beside another tenant's usage.

On a fresh SQLite ledger served by `tokenledger serve` (one worker): EVENTS unpriced
events (BENCH_REPRICE_EVENTS, default 100,000) of a model without a bundled price, then
an override prices it and POST /api/pricing/reprice prices them all, in chunks, while
another organization posts one-event batches to POST /api/v1/usage in a loop. Figures:
the repricing's time, the server's memory before and at its peak, and the other
tenant's latencies and failures meanwhile. Issue 15 measured, for 230,000 events in one
transaction: 32.6 s, ingestion answered 500 meanwhile, the server grew by 941 MiB.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from ingest import HERE, bearer, ledger_server, percentiles, prepare_ledger, rss_mib

EVENTS = int(os.environ.get("BENCH_REPRICE_EVENTS", "100000"))
BATCH = 1000


def main() -> int:
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'reprice.db'}"
        ledger = prepare_ledger(url)
        with ledger_server(url) as server, httpx.Client(base_url=server.base, timeout=600) as http:
            usage = {"Authorization": f"Bearer {ledger.key}"}
            for start in range(0, EVENTS, BATCH):
                events = [
                    {"id": f"r{n}", "organization": f"o{1 + n % 100:04d}",
                     "timestamp": f"2026-06-{1 + n % 28:02d}T12:00:00Z",
                     "model": "bench-imaginary-1", "input_tokens": 1000, "output_tokens": 100}
                    for n in range(start, min(start + BATCH, EVENTS))
                ]
                answer = http.post("/api/v1/usage", json={"events": events}, headers=usage)
                answer.raise_for_status()
            admin = bearer(ledger.admin_token)
            http.put("/api/pricing/overrides/anthropic/bench-imaginary-1", headers=admin,
                     json={"input": "3", "output": "15", "valid_from": "2026-01-01T00:00:00Z"},
                     ).raise_for_status()
            before = rss_mib(server.process.pid)
            peak = [before]
            latencies: list[float] = []
            failures: list[int] = []
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    peak[0] = max(peak[0], rss_mib(server.process.pid))
                    time.sleep(0.05)

            def other_tenant() -> None:
                with httpx.Client(base_url=server.base, timeout=60) as other:
                    n = 0
                    while not stop.is_set():
                        n += 1
                        event = {"id": f"other-{n}", "organization": "o0999",
                                 "model": "claude-sonnet-4-5", "input_tokens": 10,
                                 "output_tokens": 5}
                        sent = time.perf_counter()
                        answer = other.post("/api/v1/usage", json={"events": [event]},
                                            headers=usage)
                        latencies.append(time.perf_counter() - sent)
                        if answer.status_code != 200:
                            failures.append(answer.status_code)

            threads = [threading.Thread(target=sample), threading.Thread(target=other_tenant)]
            for thread in threads:
                thread.start()
            time.sleep(0.5)
            started = time.perf_counter()
            answer = http.post("/api/pricing/reprice", json={"unpriced": True}, headers=admin)
            seconds = time.perf_counter() - started
            time.sleep(0.5)
            stop.set()
            for thread in threads:
                thread.join()
    answer.raise_for_status()
    p50, p99 = percentiles(latencies)
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_at_start": [round(x, 2) for x in load],
        "events": EVENTS,
        "changed": answer.json()["changed"],
        "reprice_seconds": round(seconds, 2),
        "rss_before_mib": round(before, 1),
        "rss_peak_mib": round(peak[0], 1),
        "other_tenant_requests": len(latencies),
        "other_tenant_failures": failures,
        "other_tenant_p50_ms": round(p50, 1),
        "other_tenant_p99_ms": round(p99, 1),
        "other_tenant_max_ms": round(max(latencies) * 1000, 1),
    }
    print(json.dumps(report, indent=2))
    out = HERE / "results" / f"{datetime.now(UTC).date().isoformat()}-reprice.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
