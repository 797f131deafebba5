"""Batched ingestion throughput, against a bare FastAPI + SQLite insert floor, same run.

Both servers run under uvicorn on loopback, each with a fresh SQLite file in WAL mode
and synchronous=FULL; the same client sends the same batches to each. The floor is
what the web stack and SQLite cost with no validation, pricing, idempotency or rollups:
a ratio near 1 means the ledger adds little on top.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready")


def make_batches(count: int, size: int, prefix: str) -> list[dict[str, object]]:
    return [
        {
            "events": [
                {
                    "id": f"{prefix}-{b}-{i}",
                    "organization": "bench",
                    "model": "claude-sonnet-4-5",
                    "input_tokens": 1000 + i,
                    "output_tokens": 200 + b % 50,
                    "cache_read_input_tokens": 5000,
                    "cache_creation_input_tokens": 300,
                    "refresh_id": f"r-{b}",
                }
                for i in range(size)
            ]
        }
        for b in range(count)
    ]


def run_load(url: str, headers: dict[str, str], batches: list[dict[str, object]]) -> float:
    """Events per second for sending every batch once, sequentially, on one connection."""
    with httpx.Client(timeout=60, headers=headers) as client:
        client.post(url, json=batches[0]).raise_for_status()  # warm-up, not timed
        started = time.perf_counter()
        for batch in batches[1:]:
            response = client.post(url, json=batch)
            response.raise_for_status()
        elapsed = time.perf_counter() - started
    events = sum(len(b["events"]) for b in batches[1:])  # type: ignore[arg-type]
    return events / elapsed


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def bench_tokenledger(workdir: Path, batches: list[dict[str, object]]) -> float:
    env = {
        **os.environ,
        "TOKENLEDGER_DATABASE_URL": f"sqlite:///{workdir}/ledger.db",
        "TOKENLEDGER_SECRET_KEY": "bench-secret-key-0123456789-abcdefghijklmnop",
        "TOKENLEDGER_WEBHOOK_WORKER": "false",
    }
    tokenledger = [PYTHON, "-m", "tokenledger.cli"]
    subprocess.run([*tokenledger, "migrate"], env=env, check=True, capture_output=True)
    setup = (
        "from tokenledger.config import Settings; from tokenledger.db import Database;"
        "from tokenledger.organizations.service import create;"
        "from tokenledger.organizations.schemas import OrganizationCreate as O;"
        "from tokenledger.licenses.service import create as lic;"
        "from tokenledger.licenses.schemas import LicenseCreate as L;"
        "from datetime import datetime, UTC;"
        "d = Database(Settings());\n"
        "with d.session(write=True) as s:\n"
        "    o = create(s, O(name='Bench', slug='bench'))\n"
        "    lic(s, L(organization_id=o.id, credits_total=10**9, cost_per_credit='0.01',"
        " token_budget_usd=10**6, valid_from=datetime(2020, 1, 1, tzinfo=UTC)))"
    )
    subprocess.run([PYTHON, "-c", setup], env=env, check=True)
    key = subprocess.run(
        [*tokenledger, "api-key", "create", "--name", "bench"],
        env=env, check=True, capture_output=True, text=True,
    ).stdout.strip()
    port = free_port()
    server = start([*tokenledger, "serve", "--port", str(port)], env)
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz")
        return run_load(
            f"http://127.0.0.1:{port}/api/v1/usage", {"Authorization": f"Bearer {key}"}, batches
        )
    finally:
        server.terminate()
        server.wait()


def bench_floor(workdir: Path, batches: list[dict[str, object]]) -> float:
    port = free_port()
    env = {**os.environ, "FLOOR_DB": str(workdir / "floor.db")}
    server = start(
        [PYTHON, "-m", "uvicorn", "floor_app:app", "--app-dir", str(HERE), "--port", str(port),
         "--log-level", "warning"],
        env,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/healthz")
        return run_load(f"http://127.0.0.1:{port}/usage", {}, batches)
    finally:
        server.terminate()
        server.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    ratios = []
    for round_ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            batches = make_batches(args.batches, args.size, f"r{round_}")
            floor = bench_floor(workdir, batches)
            ours = bench_tokenledger(workdir, batches)
            ratios.append(ours / floor)
            print(
                f"round {round_ + 1}: floor {floor:,.0f} events/s, tokenledger {ours:,.0f} "
                f"events/s, ratio {ours / floor:.2f} (batches of {args.size})"
            )
    print(f"ingest ratio (best of {args.rounds}): {max(ratios):.2f}  target >= 0.80")
    return 0


if __name__ == "__main__":
    sys.exit(main())
