"""Fixtures of the gateway tests: the stand-in upstream and the gateway in front of it,
both real uvicorn servers, and tenants with ingest keys."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import FixedClock, make_settings, serving
from tests.factories import make_license, make_org
from tests.gateway.upstream import (
    UPSTREAM_ANTHROPIC_KEY,
    UPSTREAM_OPENAI_KEY,
    Fake,
    create_upstream,
)
from tokenledger.app import create_app
from tokenledger.auth.service import create_api_key
from tokenledger.config import Settings
from tokenledger.db import Database


@dataclass(frozen=True)
class Tenant:
    org_id: int
    slug: str
    license_id: int | None
    key: str


# SDK clients the tests opened (tests.gateway.conftest.opened), closed after each test: an
# unclosed client's socket is a ResourceWarning, which fails a later test.
OPENED: list[Any] = []


def opened(client: Any) -> Any:
    OPENED.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_sdk_clients() -> Iterator[None]:
    yield
    while OPENED:
        OPENED.pop().close()


@pytest.fixture
def fake() -> Fake:
    return Fake()


@pytest.fixture
def upstream_url(fake: Fake) -> Iterator[str]:
    with serving(create_upstream(fake)) as url:  # type: ignore[arg-type]
        yield url


def gateway_settings(database_url: str, upstream_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "anthropic_api_key": UPSTREAM_ANTHROPIC_KEY,
        "anthropic_base_url": upstream_url,
        "openai_api_key": UPSTREAM_OPENAI_KEY,
        "openai_base_url": upstream_url + "/v1",
    }
    values.update(overrides)
    return make_settings(database_url, **values)


@pytest.fixture
def settings(database_url: str, upstream_url: str) -> Settings:
    return gateway_settings(database_url, upstream_url)


@pytest.fixture
def gateway(settings: Settings, clock: FixedClock) -> Iterator[str]:
    """The gateway's base URL: the whole app under uvicorn, its "now" the clock's."""
    with serving(create_app(settings, clock=clock)) as url:
        yield url


@pytest.fixture
def make_tenant(database: Database, clock: FixedClock) -> Callable[..., Tenant]:
    def _make(license: dict[str, Any] | None = None, **org: Any) -> Tenant:
        with database.session(write=True) as session:
            organization = make_org(session, **org)
            lic = make_license(session, organization, clock(), **license) if license else None
            _key, secret = create_api_key(session, "gateway tests", organization.slug, actor=None)
            return Tenant(organization.id, organization.slug, lic.id if lic else None, secret)

    return _make
