"""`make bench`, gateway section: the same stand-in upstream (fake_upstream.py, answering
after 50 ms) called directly and through the gateway in one run, plain and streamed, at 8
and 64 connections (wrk): requests/s, p50 and p99 and the gateway's overhead (through minus
direct); the time to the first event of a stream (8 concurrent httpx clients); and every
call answered through the gateway found in the ledger afterwards.

Two figures say what a run's machine is like, since the same code gives ratios three times
apart on two machines of this kind: the CPU time the gateway's processes spent per call
through them (from /proc, all workers), and the proxy alone: `count_tokens`, which takes
the same route, key check and forwarding but holds and records nothing, at 8 and 64
connections. The ledger's share of a call is what `messages` costs beyond it.

Environment: BENCH_SECONDS (each wrk run, default 8), BENCH_POSTGRES=1 (also PostgreSQL with
two workers; needs TOKENLEDGER_TEST_POSTGRES_URL), BENCH_SQLITE=0 (skip SQLite),
BENCH_SQLITE_SYNCHRONOUS (default FULL), BENCH_TAG (result file name suffix).

`bench/gateway.py profile [seconds] [connections] [plain|streamed]` instead measures where
the gateway's time goes: the CPU time the gateway process spent per call (from
/proc/PID/stat, robust on a shared machine) and a py-spy profile of the same load (SQLite,
one worker; 64 connections, plain, 10 s by default).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import (  # noqa: E402  (bench/ is not a package)
    HERE,
    LOG,
    PYTHON,
    SECONDS,
    Load,
    Server,
    free_port,
    ledger_env,
    percentiles,
    prepare_ledger,
    wait_ready,
    wrk,
)

UPSTREAM_KEY = "sk-ant-bench-upstream"
# SQLite's synchronous setting of the gateway (the product's default, FULL: every commit
# waits for the disk; NORMAL: survives a crash of the process, not a power loss).
SYNCHRONOUS = os.environ.get("BENCH_SQLITE_SYNCHRONOUS", "FULL")
MODEL = "claude-haiku-4-5"
ORG = "o0001"


def body(stream: bool) -> str:
    return json.dumps({
        "model": MODEL, "max_tokens": 256, "stream": stream,
        "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
    })


def lua(headers: dict[str, str], stream: bool) -> str:
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(body(stream))}"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    return "\n".join(lines) + "\n"


@contextmanager
def upstream() -> Iterator[Server]:
    port = free_port()
    process = subprocess.Popen(
        [PYTHON, "-m", "uvicorn", "fake_upstream:app", "--app-dir", str(HERE), "--port",
         str(port), "--log-level", "warning", "--no-access-log"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    server = Server(process, f"http://127.0.0.1:{port}")
    try:
        wait_ready(f"{server.base}/healthz")
        yield server
    finally:
        server.stop()


@contextmanager
def gateway(database_url: str, upstream_base: str, workers: int) -> Iterator[Server]:
    port = free_port()
    env = {
        **ledger_env(database_url),
        "TOKENLEDGER_ANTHROPIC_API_KEY": UPSTREAM_KEY,
        "TOKENLEDGER_ANTHROPIC_BASE_URL": upstream_base,
        "TOKENLEDGER_SQLITE_SYNCHRONOUS": SYNCHRONOUS,
    }
    log = LOG.open("ab")
    process = subprocess.Popen(
        [PYTHON, "-m", "tokenledger.cli", "serve", "--port", str(port), "--workers",
         str(workers)],
        env=env, stdout=subprocess.DEVNULL, stderr=log,
    )
    log.close()
    server = Server(process, f"http://127.0.0.1:{port}")
    try:
        wait_ready(f"{server.base}/readyz")
        yield server
    finally:
        server.stop()


async def first_events(url: str, headers: dict[str, str], clients: int, each: int) -> Load:
    """Time to the first event of a stream, `clients` at once, `each` calls apiece."""
    times: list[float] = []
    content = body(True).encode()

    async def client(http: httpx.AsyncClient) -> None:
        for _ in range(each):
            started = time.perf_counter()
            async with http.stream("POST", url, content=content, headers=headers) as response:
                assert response.status_code == 200, response.status_code
                chunks = response.aiter_raw()
                await chunks.__anext__()
                times.append(time.perf_counter() - started)
                async for _chunk in chunks:
                    pass

    started = time.perf_counter()
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=30) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    elapsed = time.perf_counter() - started
    p50, p99 = percentiles(times)
    return Load(per_second=len(times) / elapsed, p50_ms=p50, p99_ms=p99)


def count_events(database_url: str) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as connection:
        count = connection.execute(text("SELECT count(*) FROM usage_events")).scalar_one()
    engine.dispose()
    return int(count)


def requests_of(load: Load, seconds: float) -> int:
    return round(load.per_second * seconds)


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children so far (a server and its workers)."""
    total = cpu_seconds(pid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[1]) == pid:
            total += cpu_seconds(int(stat.parent.name))
    return total


def measured(server: Server, url: str, script: str, connections: int) -> tuple[Load, float]:
    """A wrk load through the gateway, and the gateway's CPU milliseconds per call in it."""
    before = tree_cpu_seconds(server.process.pid)
    load = wrk(url, script, [], connections, SECONDS)
    used = tree_cpu_seconds(server.process.pid) - before
    return load, 1000 * used / max(1, requests_of(load, SECONDS))


def run(database_url: str, workers: int) -> dict[str, Any]:
    ledger = prepare_ledger(database_url)
    through_headers = {
        "content-type": "application/json", "anthropic-version": "2023-06-01",
        "x-api-key": ledger.key, "tokenledger-organization": ORG,
    }
    direct_headers = {
        "content-type": "application/json", "anthropic-version": "2023-06-01",
        "x-api-key": UPSTREAM_KEY,
    }
    figures: dict[str, Any] = {}
    answered = 0
    with upstream() as fake, gateway(database_url, fake.base, workers) as tl:
        direct_url = f"{fake.base}/v1/messages"
        through_url = f"{tl.base}/gateway/anthropic/v1/messages"
        # Not metered: the stand-in answers it like a message, and nothing is recorded.
        count_url = f"{tl.base}/gateway/anthropic/v1/messages/count_tokens"
        # Warm up both (connections, caches, the price data).
        wrk(direct_url, lua(direct_headers, False), [], 8, 2)
        warm = wrk(through_url, lua(through_headers, False), [], 8, 2)
        answered += requests_of(warm, 2)
        for stream in (False, True):
            for connections in (8, 64):
                direct = wrk(direct_url, lua(direct_headers, stream), [], connections, SECONDS)
                through, cpu = measured(tl, through_url, lua(through_headers, stream), connections)
                answered += requests_of(through, SECONDS)
                key = f"{'streamed' if stream else 'plain'}_{connections}"
                figures[key] = {
                    "direct": direct.as_dict(),
                    "through": through.as_dict(),
                    "overhead_p50_ms": round(through.p50_ms - direct.p50_ms, 2),
                    "overhead_p99_ms": round(through.p99_ms - direct.p99_ms, 2),
                    "throughput_ratio": round(through.per_second / direct.per_second, 2),
                    "gateway_cpu_ms_per_call": round(cpu, 2),
                }
                print(key, json.dumps(figures[key]), flush=True)
                if not stream:
                    # The proxy alone, against the same run's direct call.
                    proxy, cpu = measured(tl, count_url, lua(through_headers, False), connections)
                    figures[f"proxy_only_{connections}"] = {
                        "through": proxy.as_dict(),
                        "overhead_p50_ms": round(proxy.p50_ms - direct.p50_ms, 2),
                        "overhead_p99_ms": round(proxy.p99_ms - direct.p99_ms, 2),
                        "throughput_ratio": round(proxy.per_second / direct.per_second, 2),
                        "gateway_cpu_ms_per_call": round(cpu, 2),
                    }
                    print(f"proxy_only_{connections}",
                          json.dumps(figures[f"proxy_only_{connections}"]), flush=True)
        direct_first = asyncio.run(first_events(direct_url, direct_headers, 8, 40))
        through_first = asyncio.run(first_events(through_url, through_headers, 8, 40))
        answered += 8 * 40
        figures["first_event_8"] = {
            "direct": direct_first.as_dict(),
            "through": through_first.as_dict(),
            "overhead_p50_ms": round(through_first.p50_ms - direct_first.p50_ms, 2),
        }
        print("first_event_8", json.dumps(figures["first_event_8"]), flush=True)
        time.sleep(2)  # streams still being recorded
    stored = count_events(database_url)
    # wrk counts the calls it completed within its time; the few in flight at its end were
    # answered and recorded too, so the ledger holds at least as many.
    figures["ledger"] = {"answered_about": answered, "events_stored": stored}
    return figures


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def profile(seconds: int, connections: int, stream: bool) -> int:
    from profile import PY_SPY, summarize

    with tempfile.TemporaryDirectory() as tmp:
        database_url = f"sqlite:///{tmp}/ledger.db"
        ledger = prepare_ledger(database_url)
        headers = {
            "content-type": "application/json", "anthropic-version": "2023-06-01",
            "x-api-key": ledger.key, "tokenledger-organization": ORG,
        }
        raw = Path(tempfile.gettempdir()) / "tokenledger-gateway-profile.txt"  # kept
        with upstream() as fake, gateway(database_url, fake.base, 1) as tl:
            url = f"{tl.base}/gateway/anthropic/v1/messages"
            wrk(url, lua(headers, stream), [], 8, 2)  # warm up
            # --gil: only samples that hold the GIL, i.e. Python running (a thread waiting
            # for the GIL, or for a commit's fsync, would otherwise count as busy).
            spy = subprocess.Popen(
                [PY_SPY, "record", "--pid", str(tl.process.pid), "--format", "raw",
                 "--rate", "200", "--duration", str(seconds), "--output", str(raw),
                 "--nonblocking", "--gil"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            cpu = cpu_seconds(tl.process.pid), cpu_seconds(fake.process.pid)
            load = wrk(url, lua(headers, stream), [], connections, seconds)
            used = cpu_seconds(tl.process.pid) - cpu[0], cpu_seconds(fake.process.pid) - cpu[1]
            spy.wait()
            metrics = httpx.get(f"{tl.base}/metrics").text
        groups = {
            line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
            if line.startswith("tokenledger_usage_group_requests_")
            and line.split()[0].endswith(("_sum", "_count"))
        }
        calls = load.per_second * seconds
        print(f"{connections} connections, {'streamed' if stream else 'plain'}: {load.as_dict()}")
        print(f"gateway CPU per call: {1000 * used[0] / calls:.2f} ms "
              f"(upstream {1000 * used[1] / calls:.2f} ms); requests per group commit: "
              f"{groups['tokenledger_usage_group_requests_sum'] / max(1, groups['tokenledger_usage_group_requests_count']):.1f}")
        print(summarize(raw))
        print(f"py-spy's samples: {raw}")
    return 0


def main() -> int:
    if sys.argv[1:2] == ["profile"]:
        args = sys.argv[2:]
        return profile(
            int(args[0]) if args else 10,
            int(args[1]) if len(args) > 1 else 64,
            len(args) > 2 and args[2] == "streamed",
        )
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "seconds_per_load": SECONDS,
        "upstream_delay_ms": 50,
        "sqlite_synchronous": SYNCHRONOUS,
    }
    if os.environ.get("BENCH_SQLITE") != "0":
        with tempfile.TemporaryDirectory() as tmp:
            report["sqlite_1_worker"] = run(f"sqlite:///{tmp}/ledger.db", 1)
    if os.environ.get("BENCH_POSTGRES") == "1":
        from sqlalchemy import create_engine, make_url, text

        base_url = os.environ["TOKENLEDGER_TEST_POSTGRES_URL"]
        name = f"tokenledger_bench_gateway_{os.getpid()}"
        admin = create_engine(base_url.replace("postgresql://", "postgresql+psycopg://", 1),
                              isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(base_url).set(database=name).render_as_string(hide_password=False)
        try:
            report["postgresql_2_workers"] = run(url, 2)
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    out = HERE / "results" / f"{datetime.now(UTC).date().isoformat()}-gateway{os.environ.get('BENCH_TAG', '')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
