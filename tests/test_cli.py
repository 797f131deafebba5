"""The `tokenledger` console script, run as a real subprocess against real databases."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.conftest import ADMIN_PASSWORD, SECRET, login, make_settings
from tests.factories import make_org
from tokenledger.app import create_app
from tokenledger.auth.models import AdminUser, ApiKey
from tokenledger.cli import tcp_socket
from tokenledger.db import Database
from tokenledger.migrations import runner

TOKENLEDGER = Path(sys.executable).parent / "tokenledger"


def _env(url: str, secret: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENLEDGER_")}
    env["TOKENLEDGER_DATABASE_URL"] = url
    if secret is not None:
        env["TOKENLEDGER_SECRET_KEY"] = secret
    return env


def run(
    *args: str, url: str, cwd: Path, stdin: str | None = None, secret: str | None = SECRET
) -> subprocess.CompletedProcess[str]:
    return run_all([list(args)], url=url, cwd=cwd, stdin=stdin, secret=secret)[0]


def run_all(
    commands: list[list[str]],
    *,
    url: str,
    cwd: Path,
    stdin: str | None = None,
    secret: str | None = SECRET,
) -> list[subprocess.CompletedProcess[str]]:
    """Independent commands, run at the same time (each one starts a Python, ~1 s)."""
    processes = [
        subprocess.Popen(
            [str(TOKENLEDGER), *args],
            env=_env(url, secret),
            cwd=cwd,  # no stray .env file is read
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    results = []
    try:
        for args, process in zip(commands, processes, strict=True):
            out, err = process.communicate(stdin, timeout=30)
            results.append(subprocess.CompletedProcess(args, process.returncode, out, err))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    """A migrated SQLite database for commands whose logic does not depend on the backend."""
    path = tmp_path / "cli.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


def test_console_script_is_installed():
    assert TOKENLEDGER.exists()


def test_unmigrated_database_is_refused(empty_database_url, tmp_path):
    if empty_database_url.startswith("sqlite"):
        # A file that exists but holds no schema (a missing one is tested in operations/).
        Path(empty_database_url.split(":///", 1)[1]).touch()
    # An impossible port: should the refusal break, no server starts and stays up.
    result = run("serve", "--port", "-1", url=empty_database_url, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    line = one_line(result.stderr)
    assert line.startswith("tokenledger: database has no schema")
    assert "tokenledger migrate" in line


def test_migrate_is_idempotent(empty_database_url, tmp_path):
    first = run("migrate", url=empty_database_url, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    head = runner.head_revision()
    assert one_line(first.stdout) == f"database migrated from empty to {head}"
    second = run("migrate", url=empty_database_url, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert one_line(second.stdout) == f"database already at the newest schema ({head})"
    database = Database(make_settings(empty_database_url))
    try:
        assert runner.is_migrated(database.engine)
    finally:
        database.dispose()


def test_create_admin(sqlite_url, tmp_path):
    ok = run(
        "create-admin", "--email", "Ops@Example.com", "--password", ADMIN_PASSWORD,
        url=sqlite_url, cwd=tmp_path,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert one_line(ok.stdout) == "created admin ops@example.com"

    from_stdin, duplicate, weak = run_all(
        [
            [
                "create-admin",
                "--email",
                "viewer@example.com",
                "--password-stdin",
                "--role",
                "viewer",
            ],
            ["create-admin", "--email", "OPS@example.com", "--password", ADMIN_PASSWORD],
            ["create-admin", "--email", "new@example.com", "--password", "short"],
        ],
        url=sqlite_url,
        cwd=tmp_path,
        stdin=ADMIN_PASSWORD + "\n",
    )
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert one_line(from_stdin.stdout) == "created viewer viewer@example.com"
    for result, reason in ((duplicate, "already exists"), (weak, "at least 10 characters")):
        assert result.returncode == 1, result.stderr
        assert result.stdout == ""
        assert reason in one_line(result.stderr)

    database = Database(make_settings(sqlite_url))
    try:
        with database.session(write=False) as session:
            users = {u.email: u.role for u in session.scalars(select(AdminUser))}
        assert users == {"ops@example.com": "admin", "viewer@example.com": "viewer"}
        # The password read from stdin is the one that logs in: no trailing newline kept.
        with TestClient(create_app(make_settings(sqlite_url))) as client:
            assert login(client, "viewer@example.com", ADMIN_PASSWORD)["token_type"] == "bearer"
    finally:
        database.dispose()


def test_api_keys(sqlite_url, tmp_path):
    database = Database(make_settings(sqlite_url))
    try:
        with database.session(write=True) as session:
            make_org(session, name="Acme", slug="acme")

        created, unknown = run_all(
            [
                ["api-key", "create", "--name", "acme ingest", "--org", "acme"],
                ["api-key", "create", "--name", "x", "--org", "nope"],
            ],
            url=sqlite_url,
            cwd=tmp_path,
        )
        assert created.returncode == 0, created.stderr
        secret = one_line(created.stdout)
        assert secret.startswith("tl_")
        assert secret not in created.stderr
        assert "not shown again" in created.stderr
        assert unknown.returncode == 1
        assert unknown.stdout == ""
        assert "no organization with slug 'nope'" in one_line(unknown.stderr)

        with database.session(write=False) as session:
            keys = session.scalars(select(ApiKey)).all()
        assert len(keys) == 1
        key = keys[0]
        assert key.key_hash == hashlib.sha256(secret.encode()).hexdigest()
        # Only the hash is stored: the secret is nowhere in the database files.
        for path in tmp_path.glob("cli.db*"):
            assert secret.encode() not in path.read_bytes(), path

        headers = {"Authorization": f"Bearer {secret}"}
        budget = ("/api/v1/budget", {"organization": "acme"})
        with TestClient(create_app(make_settings(sqlite_url))) as client:
            assert client.get(budget[0], params=budget[1], headers=headers).status_code == 200

        listed, missing = run_all(
            [["api-key", "list"], ["api-key", "revoke", "999"]], url=sqlite_url, cwd=tmp_path
        )
        assert listed.returncode == 0, listed.stderr
        assert secret not in listed.stdout
        row = next(line for line in listed.stdout.splitlines() if line.split()[0] == str(key.id))
        assert row.split()[1:3] == [key.prefix, "acme"]
        assert "active" in row
        assert "never" not in row  # its use was recorded
        assert missing.returncode == 1
        assert "no API key with id 999" in one_line(missing.stderr)

        revoked = run("api-key", "revoke", str(key.id), url=sqlite_url, cwd=tmp_path)
        assert revoked.returncode == 0, revoked.stderr
        assert one_line(revoked.stdout) == f"revoked key {key.id} 'acme ingest'"
        with database.session(write=False) as session:
            stored = session.get(ApiKey, key.id)
            assert stored is not None
            assert stored.revoked_at is not None
            assert stored.last_used_at is not None
        with TestClient(create_app(make_settings(sqlite_url))) as client:
            response = client.get(budget[0], params=budget[1], headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    finally:
        database.dispose()


def test_serve_without_secret_key_on_postgresql(postgres_migrated, tmp_path):
    result = run("serve", "--port", "-1", url=postgres_migrated, cwd=tmp_path, secret=None)
    assert result.returncode == 1
    assert "TOKENLEDGER_SECRET_KEY" in one_line(result.stderr)


def test_the_workers_socket_gets_tcp_nodelay_on_every_connection() -> None:
    """`serve --workers N` listens on tcp_socket(): asyncio sets TCP_NODELAY on what it
    accepts (uvicorn's own socket says protocol 0, and keep-alive requests then waited
    for delayed ACKs)."""
    config = uvicorn.Config("tokenledger.app:create_app", factory=True, host="127.0.0.1", port=0)
    listener = tcp_socket(config)
    assert listener.proto == socket.IPPROTO_TCP
    assert listener.get_inheritable()
    accepted: list[int] = []

    class Report(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            accepted.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    async def connect_once() -> None:
        server = await asyncio.get_running_loop().create_server(Report, sock=listener)
        async with server:
            _reader, writer = await asyncio.open_connection(*listener.getsockname()[:2])
            for _ in range(100):
                if accepted:
                    break
                await asyncio.sleep(0.01)
            writer.close()

    asyncio.run(connect_once())
    assert accepted == [1]


def test_a_database_error_is_not_called_unreachable(database_url, database, tmp_path):
    """Reported from outside: every database error (a deadlock among them) was printed as
    "database unreachable". A reachable database that fails a statement says what failed:
    on SQLite a missing table, on PostgreSQL a lock wait past its timeout."""
    runner.upgrade(database.engine)
    env = _env(database_url, SECRET)
    if database.dialect_name == "sqlite":
        with database.engine.begin() as connection:
            connection.exec_driver_sql("DROP TABLE api_keys")
        done = subprocess.run(
            [str(TOKENLEDGER), "api-key", "list"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        expected = "no such table: api_keys"
    else:
        env["PGOPTIONS"] = "-c lock_timeout=200"
        with database.engine.connect() as holder:
            holder.exec_driver_sql("BEGIN")
            holder.exec_driver_sql("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")
            done = subprocess.run(
                [str(TOKENLEDGER), "api-key", "list"],
                env=env,
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            holder.exec_driver_sql("ROLLBACK")
        expected = "lock timeout"
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert line.startswith("tokenledger: database error: "), line
    assert expected in line
    assert "unreachable" not in line
