"""`make bench`, in-memory rows section: what a request waits for when the rows every
request reads from memory (hot.py: keys, organizations, prices, licenses in force) are due
to be read again, with the refreshing thread (the app's) and without it (the TTL drops
everything and the next request reads it all again itself), at 1,000 and 20,000
organizations with a license each (SQLite).

A request is played by the reads an ingest request or a gateway call makes from memory,
every 5 ms for 12 s with a TTL of 2 s; its time is what the event loop would be held.
Environment: BENCH_TAG (result file name suffix).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import HERE, ledger_env, prepare_ledger  # noqa: E402  (bench/ is not a package)

TTL = 2.0
SECONDS = 12.0
EVERY = 0.005


def play(hot: Any, key: str, slug: str, org_id: int) -> dict[str, float]:
    """The reads of one request each EVERY seconds for SECONDS: their times, in ms."""
    times = []
    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline:
        started = time.perf_counter()
        hot.api_key(key)
        hot.organizations({slug}, set())
        hot.price_book()
        hot.licenses(org_id)
        times.append((time.perf_counter() - started) * 1000)
        time.sleep(EVERY)
    times.sort()
    return {
        "requests": len(times),
        "p50_ms": round(times[len(times) // 2], 3),
        "p99_ms": round(times[int(len(times) * 0.99)], 3),
        "max_ms": round(times[-1], 1),
        "over_10_ms": sum(1 for t in times if t > 10),
    }


def run(orgs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/ledger.db"
        ledger = prepare_ledger(url, orgs)
        os.environ.update(ledger_env(url))
        from tokenledger.app import settle_heap
        from tokenledger.config import Settings
        from tokenledger.db import Database
        from tokenledger.hot import HotReads
        from tokenledger.organizations import refs

        database = Database(Settings())
        figures: dict[str, Any] = {}
        for refreshing in (False, True):
            hot = HotReads(database, ttl=TTL)
            org = refs.for_key(hot.organizations, None, "o0001")
            settle_heap()  # as the app does at its start
            if refreshing:
                hot.start_refreshing()
            try:
                figures["refreshing" if refreshing else "dropped_at_ttl"] = play(
                    hot, ledger.key, org.slug, org.id
                )
            finally:
                hot.stop_refreshing()
        started = time.perf_counter()
        HotReads(database, ttl=TTL).refresh()
        figures["one_refresh_ms"] = round((time.perf_counter() - started) * 1000, 1)
        database.dispose()
    print(orgs, json.dumps(figures), flush=True)
    return figures


def main() -> int:
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "ttl_seconds": TTL,
        "seconds": SECONDS,
    }
    for orgs in [int(n) for n in os.environ.get("BENCH_ORGS", "1000,20000").split(",")]:
        report[f"orgs_{orgs}"] = run(orgs)
    tag = os.environ.get("BENCH_TAG", "")
    out = HERE / "results" / f"{datetime.now(UTC).date().isoformat()}-hot-reads{tag}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
