"""`tokenledger backup` while a real server takes usage, and the copy restored."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import Tenant, make_settings, new_tenant
from tests.operations.conftest import TOKENLEDGER, Server, command_env, tokenledger
from tokenledger.db import Database
from tokenledger.migrations import runner

BATCH = 10


def _batch(tenant: Tenant, number: int) -> list[dict[str, object]]:
    return [
        {
            "id": f"b{number}-e{index}",
            "model": "claude-sonnet-4-5",
            "timestamp": "2026-06-15T12:00:00Z",
            "input_tokens": 1000 + index,
            "output_tokens": 100,
        }
        for index in range(BATCH)
    ]


class Poster(threading.Thread):
    """Posts batch after batch; remembers when each was acknowledged."""

    def __init__(self, server: Server, tenant: Tenant) -> None:
        super().__init__(daemon=True)
        self.server, self.tenant = server, tenant
        self.acknowledged: list[tuple[float, int]] = []  # (monotonic time, batch number)
        self.failures: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.server.url, timeout=30) as client:
            number = 0
            while not self.halt.is_set():
                response = client.post(
                    "/api/v1/usage",
                    json={"events": _batch(self.tenant, number)},
                    headers=self.tenant.headers,
                )
                if response.status_code != 200:
                    self.failures.append(response.text)
                    return
                self.acknowledged.append((time.monotonic(), number))
                number += 1

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + 60
        while len(self.acknowledged) < count:
            assert not self.failures, self.failures
            assert time.monotonic() < deadline, "the server stopped acknowledging"
            time.sleep(0.01)


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "live.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


def test_backup_under_load_restores_whole_and_reconciles(sqlite_url, server_root, tmp_path):
    database_url = sqlite_url
    database = Database(make_settings(database_url))
    try:
        tenant = new_tenant(database, {})
    finally:
        database.dispose()
    server = Server(database_url, server_root)
    server.start()
    poster = Poster(server, tenant)
    try:
        poster.start()
        poster.wait_for(5)
        started = time.monotonic()
        copy = tmp_path / "backups" / "copy.db"
        copy.parent.mkdir()
        result = tokenledger(database_url, tmp_path, "backup", str(copy))
        finished = time.monotonic()
        acknowledged_at_finish = len(poster.acknowledged)
        poster.wait_for(acknowledged_at_finish + 3)  # still serving after the backup
    finally:
        poster.halt.set()
        poster.join(timeout=60)
        server.stop()
    assert not poster.failures, poster.failures
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"backup of {database_url.split(':///')[1]} written to {copy}")
    assert list(copy.parent.iterdir()) == [copy]  # no partial file left beside it

    connection = sqlite3.connect(copy)
    try:
        ids = {row[0] for row in connection.execute("SELECT external_id FROM usage_events")}
        [(revision,)] = connection.execute("SELECT version_num FROM alembic_version").fetchall()
        [(journal,)] = connection.execute("PRAGMA journal_mode").fetchall()
    finally:
        connection.close()
    assert revision == runner.head_revision()
    assert journal == "delete"  # one self-contained file

    batches = {number for _at, number in poster.acknowledged}
    in_copy = {number for number in batches if f"b{number}-e0" in ids}
    before = {number for at, number in poster.acknowledged if at < started}
    after = {number for at, number in poster.acknowledged if at > finished}
    assert before <= in_copy, "an event acknowledged before the backup began is missing"
    assert not (after & in_copy), "the copy holds a batch acknowledged after it was taken"
    # Whole batches only: a batch is one transaction, and the copy is one moment.
    assert ids == {f"b{number}-e{index}" for number in in_copy for index in range(BATCH)}

    restored = f"sqlite:///{copy}"
    reconcile = tokenledger(restored, tmp_path, "reconcile")
    assert reconcile.returncode == 0, reconcile.stdout + reconcile.stderr
    assert "no drift" in reconcile.stdout
    # The restored copy serves: a retry of a stored event is a duplicate there.
    restored_server = Server(restored, tmp_path)
    restored_server.start()
    try:
        response = httpx.post(
            f"{restored_server.url}/api/v1/usage",
            json={"events": _batch(tenant, 0)},
            headers=tenant.headers,
            timeout=30,
        )
    finally:
        restored_server.stop()
    assert response.status_code == 200, response.text
    assert {r["status"] for r in response.json()["results"]} == {"duplicate"}


def test_backup_refuses_an_existing_file_and_writes_nothing(sqlite_url, tmp_path):
    target = tmp_path / "exists.db"
    target.write_bytes(b"keep me")
    result = tokenledger(sqlite_url, tmp_path, "backup", str(target))
    assert result.returncode == 1
    assert result.stderr.strip() == f"tokenledger: {target} exists; choose a new file name"
    assert target.read_bytes() == b"keep me"


def test_backup_on_postgresql_points_to_pg_dump(postgres_migrated, tmp_path):
    target = tmp_path / "copy.dump"
    result = tokenledger(postgres_migrated, tmp_path, "backup", str(target))
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("tokenledger: `tokenledger backup` copies the embedded SQLite database")
    assert "pg_dump --format=custom" in line
    assert "pg_restore" in line
    assert not target.exists()


COMMANDS = [
    ["serve", "--port", "-1"],
    ["reconcile"],
    ["reprice", "--unpriced", "--dry-run"],
    ["api-key", "list"],
    ["create-admin", "--email", "a@example.com", "--password", "long-enough-password"],
    ["demo-data"],
    ["prices", "list"],
    ["backup", "copy.db"],
]


def test_a_command_on_a_missing_sqlite_database_creates_nothing(tmp_path):
    missing = tmp_path / "nowhere" / "tokenledger.db"
    env = command_env(f"sqlite:///{missing}")
    # Started together: each is a Python start-up of its own.
    processes = [
        subprocess.Popen(
            [str(TOKENLEDGER), *command],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in COMMANDS
    ]
    try:
        # A guard against a hang, not a speed limit: eight start-ups on a busy machine.
        answers = [process.communicate(timeout=300) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    for command, process, (out, err) in zip(COMMANDS, processes, answers, strict=True):
        assert process.returncode == 1, command
        assert out == "", command
        assert err.strip() == (
            f"tokenledger: database {missing} does not exist: check TOKENLEDGER_DATABASE_URL, "
            "or create it with `tokenledger migrate`"
        ), command
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_command_on_a_missing_postgresql_database_says_so(postgres_migrated, tmp_path):
    missing = httpx.URL(postgres_migrated).copy_with(path="/tokenledger_missing_db")
    result = tokenledger(str(missing), tmp_path, "reconcile")
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("tokenledger: database unreachable:")
    assert 'database "tokenledger_missing_db" does not exist' in line


def test_migrate_creates_a_missing_sqlite_database(tmp_path):
    path = tmp_path / "new" / "tokenledger.db"
    result = tokenledger(f"sqlite:///{path}", tmp_path, "migrate")
    assert result.returncode == 0, result.stderr
    assert path.exists()
