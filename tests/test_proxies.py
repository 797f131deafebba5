"""Forwarded headers are believed from the proxies an operator names, and no others."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from tests.client.conftest import LedgerServer
from tests.conftest import make_settings

FORGED = {"X-Forwarded-For": "203.0.113.9"}


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[object]:
    servers: list[LedgerServer] = []

    def start(**env: str) -> LedgerServer:
        server = LedgerServer(tmp_path / f"server-{len(servers)}")
        # One failure per account, four per address, in this test.
        server.env.update(TOKENLEDGER_LOGIN_MAX_FAILURES="1", **env)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


def _fail_logins_from_many_accounts(http: httpx.Client, count: int) -> list[int]:
    return [
        http.post(
            "/api/auth/token", data={"username": f"user{n}@example.com", "password": "wrong"}
        ).status_code
        for n in range(count)
    ]


@pytest.mark.slow
def test_a_forged_forwarded_for_from_loopback_does_not_escape_the_throttle(server_factory):
    """`tokenledger serve` as it starts by default (uvicorn alone trusts 127.0.0.1)."""
    server = server_factory()  # type: ignore[operator]
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        assert _fail_logins_from_many_accounts(http, 4) == [401] * 4
        data = {"username": "someone-new@example.com", "password": "wrong"}
        assert http.post("/api/auth/token", data=data).status_code == 429
        assert http.post("/api/auth/token", data=data, headers=FORGED).status_code == 429


@pytest.mark.slow
def test_a_named_proxy_is_believed(server_factory):
    server = server_factory(TOKENLEDGER_TRUSTED_PROXIES="10.0.0.0/8, 127.0.0.1")  # type: ignore[operator]
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        assert _fail_logins_from_many_accounts(http, 4) == [401] * 4
        data = {"username": "someone-new@example.com", "password": "wrong"}
        assert http.post("/api/auth/token", data=data).status_code == 429
        # Through the proxy, another client: its own address, its own count.
        assert http.post("/api/auth/token", data=data, headers=FORGED).status_code == 401
    rows = server.rows("SELECT DISTINCT client_address FROM login_attempts ORDER BY 1")
    assert rows == [("127.0.0.1",), ("203.0.113.9",)]


def test_trusted_proxies_must_be_addresses():
    assert make_settings("sqlite://", trusted_proxies="").trusted_proxy_list == []
    settings = make_settings("sqlite://", trusted_proxies="192.0.2.1, 10.0.0.0/8,::1")
    assert settings.trusted_proxy_list == ["192.0.2.1", "10.0.0.0/8", "::1"]
    with pytest.raises(ValidationError):
        make_settings("sqlite://", trusted_proxies="proxy.internal")
