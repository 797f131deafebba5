"""A real tokenledger server in a subprocess, on its own SQLite file, for the client tests."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from tests.conftest import free_port
from tests.factories import make_org
from tokenledger.auth.service import create_api_key
from tokenledger.config import Settings
from tokenledger.db import Database

SECRET = "client-test-secret-key-with-enough-entropy-0123456789"
# Client options: no background flushes, and one quick retry before giving up.
GIVE_UP_FAST: dict[str, Any] = {"flush_interval": None, "max_retries": 1, "backoff": 0.01}


def _tokenledger_command() -> list[str]:
    script = Path(sys.executable).parent / "tokenledger"
    return [str(script)] if script.exists() else [sys.executable, "-m", "tokenledger.cli"]


@dataclass(frozen=True)
class Tenant:
    slug: str
    id: int
    key: str


class LedgerServer:
    """`tokenledger serve` on a loopback port; start, stop and kill it like an operator."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.db_path = root / "t.db"
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENLEDGER_")}
        self.env.update(
            TOKENLEDGER_DATABASE_URL=f"sqlite:///{self.db_path}",
            TOKENLEDGER_SECRET_KEY=SECRET,
            TOKENLEDGER_WEBHOOK_WORKER="false",
            TOKENLEDGER_SQLITE_SYNCHRONOUS="NORMAL",
        )
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        subprocess.run(
            [*_tokenledger_command(), "migrate"],
            env=self.env,
            cwd=root,
            check=True,
            capture_output=True,
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._log = open(self.root / "server.log", "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [*_tokenledger_command(), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env,
            cwd=self.root,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                pytest.fail(f"server exited:\n{(self.root / 'server.log').read_text()}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        pytest.fail("server did not answer /healthz within 30 s")

    def ensure_running(self) -> None:
        if self.process is None or self.process.poll() is not None:
            self.stop()
            self.start()

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def new_tenant(self) -> Tenant:
        """A fresh organization and an ingest key for it, written straight to the database."""
        settings = Settings(
            _env_file=None, database_url=f"sqlite:///{self.db_path}", secret_key=SECRET
        )
        database = Database(settings)
        try:
            with database.session(write=True) as session:
                org = make_org(session)
                _key, secret = create_api_key(session, "client tests", org.slug, actor=None)
                tenant = Tenant(slug=org.slug, id=org.id, key=secret)
        finally:
            database.dispose()
        return tenant

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        connection = sqlite3.connect(self.db_path, timeout=30)
        try:
            return connection.execute(sql, params).fetchall()
        finally:
            connection.close()

    def event_count(self, tenant: Tenant) -> int:
        [(count,)] = self.rows(
            "SELECT count(*) FROM usage_events WHERE organization_id = ?", tenant.id
        )
        return int(count)

    def external_ids(self, tenant: Tenant) -> set[str]:
        """The ids of the organization's stored events."""
        sql = "SELECT external_id FROM usage_events WHERE organization_id = ?"
        return {row[0] for row in self.rows(sql, tenant.id)}

    def requests_stored(self, tenant: Tenant) -> int:
        """Batches that stored events: each POST has its own time of receipt."""
        [(count,)] = self.rows(
            "SELECT count(DISTINCT received_at) FROM usage_events WHERE organization_id = ?",
            tenant.id,
        )
        return int(count)


@pytest.fixture(scope="session")
def ledger_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LedgerServer]:
    server = LedgerServer(tmp_path_factory.mktemp("ledger"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def tenant(ledger_server: LedgerServer) -> Tenant:
    # A test may kill the shared server to see the client ride out the outage.
    ledger_server.ensure_running()
    return ledger_server.new_tenant()


class LossyProxy:
    """Forwards to the server, then loses the first `lose` answers (a 503 instead)."""

    def __init__(self, upstream: str, lose: int) -> None:
        self.bodies: list[bytes] = []
        self.lose = lose
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {
                    name: value
                    for name, value in self.headers.items()
                    if name.lower() in {"authorization", "content-type"}
                }
                answer = httpx.request(
                    self.command, upstream + self.path, content=body, headers=headers, timeout=10
                )
                with proxy._lock:
                    proxy.bodies.append(body)
                    lost = len(proxy.bodies) <= proxy.lose
                status, content = (503, b"lost") if lost else (answer.status_code, answer.content)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PUT = _forward

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def lossy_proxy(ledger_server: LedgerServer) -> Iterator[LossyProxy]:
    proxy = LossyProxy(ledger_server.base_url, lose=2)
    try:
        yield proxy
    finally:
        proxy.close()
