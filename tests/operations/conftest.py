"""A real `tokenledger serve` process on either database, to start, kill -9 and restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

from tests.conftest import SECRET, free_port, make_settings
from tokenledger.db import Database

TOKENLEDGER = Path(sys.executable).parent / "tokenledger"


def command_env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a tokenledger process: only what the test sets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENLEDGER_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        TOKENLEDGER_DATABASE_URL=database_url,
        TOKENLEDGER_SECRET_KEY=SECRET,
        TOKENLEDGER_SQLITE_SYNCHRONOUS="NORMAL",
        TOKENLEDGER_WEBHOOK_WORKER="false",
        TOKENLEDGER_BACKFILL_MAX_AGE_DAYS=str(100 * 365),
    )
    env.update(extra)
    return env


def tokenledger(
    database_url: str, cwd: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TOKENLEDGER), *args],
        cwd=cwd,
        env=command_env(database_url, **env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class Server:
    """`tokenledger serve` on a loopback port, as an operator runs it."""

    def __init__(self, database_url: str, root: Path, workers: int = 1, **env: str) -> None:
        self.root = root
        self.port = free_port()
        self.workers = workers
        self.env = command_env(database_url, **env)
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._log = open(self.root / "server.log", "ab")  # noqa: SIM115 - closed in stop()
        command = [str(TOKENLEDGER), "serve", "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*command, "--workers", str(self.workers)],
            env=self.env,
            cwd=self.root,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # kill -9 reaches the workers too
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                pytest.fail(f"server exited:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"server did not become ready within 60 s:\n{self.log()}")

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self) -> None:
        """kill -9 of the whole process group: the supervisor and every worker."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=15)
        self.process = None
        self._close_log()

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            self.process = None
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


@pytest.fixture
def server_root(tmp_path: Path) -> Path:
    root = tmp_path / "server"
    root.mkdir()
    return root


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    database = Database(make_settings(database_url))
    yield database
    database.dispose()
