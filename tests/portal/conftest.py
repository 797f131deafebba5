"""Fixtures of the tenant access tests (the portal here, the tenant API in tests/usage): two
organizations in Europe/Berlin, A with events across the October/November boundary, B with
figures that must never show for A."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import (
    FixedClock,
    Tenant,
    event,
    ingest,
    make_settings,
)
from tokenledger.app import create_app
from tokenledger.config import Settings

# Europe/Berlin is UTC+1 from 2026-10-25: 22:30 UTC on Oct 31 is 23:30 there (October),
# 23:30 UTC is 00:30 on Nov 1 (November; in UTC it would still be October).
A_EVENTS = (
    ("a-oct-31", datetime(2026, 10, 31, 22, 30, tzinfo=UTC), "1.25", "claude-sonnet-4-5"),
    ("a-nov-01", datetime(2026, 10, 31, 23, 30, tzinfo=UTC), "2.50", "claude-haiku-4-5"),
    ("a-nov-15", datetime(2026, 11, 15, 10, 0, tzinfo=UTC), "0.75", "claude-sonnet-4-5"),
    ("a-nov-18", datetime(2026, 11, 18, 11, 0, tzinfo=UTC), "0.40", "claude-sonnet-4-5"),
)
# Organization B: names and figures that appear nowhere in A's data.
B_NAME, B_SLUG, B_MODEL, B_COST, B_TOKENS = (
    "Beta Secret Holdings",
    "beta-secret",
    "b-secret-model",
    "777.77",
    987654,
)
B_MARKERS = (B_NAME, B_SLUG, B_MODEL, "777.77", "987654", "987,654", "987.654", "b-evt")


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url, billing_timezone="Europe/Berlin")


@pytest.fixture
def app(settings: Settings, clock: FixedClock) -> Any:
    return create_app(settings, clock=clock)


@dataclass(frozen=True)
class Pair:
    a: Tenant
    b: Tenant


def a_license() -> dict[str, Any]:
    """A monthly USD budget of 10 and 1000 credits at 0.01 (10 USD), since September."""
    return {
        "credits_total": Decimal(1000),
        "cost_per_credit": Decimal("0.01"),
        "token_budget_usd": Decimal(10),
        "budget_period": "monthly",
        "valid_from": datetime(2026, 9, 1, tzinfo=UTC),
    }


@pytest.fixture
def pair(client: Any, make_tenant: Any) -> Pair:
    a = make_tenant(license=a_license(), name="Alpha Tenant GmbH", slug="alpha")
    b = make_tenant(
        license={**a_license(), "token_budget_usd": Decimal(5000), "credits_total": Decimal(10**6)},
        name=B_NAME,
        slug=B_SLUG,
    )
    ingest(
        client,
        a,
        *(
            event(cost, id=eid, at=at, model=model, input_tokens=1000, output_tokens=100)
            for eid, at, cost, model in A_EVENTS
        ),
    )
    ingest(
        client,
        b,
        *(
            event(
                B_COST,
                id=f"b-evt-{n}",
                at=at,
                model=B_MODEL,
                input_tokens=B_TOKENS,
                output_tokens=B_TOKENS,
            )
            for n, at in enumerate(at for _eid, at, _cost, _model in A_EVENTS)
        ),
    )
    return Pair(a, b)


def assert_nothing_of_b(text: str) -> None:
    for marker in B_MARKERS:
        assert marker not in text, f"{marker!r} of organization B in: {text[:400]}"


@pytest.fixture
def web(app: Any) -> Iterator[TestClient]:
    """A client that does not follow redirects, for the admin pages' forms."""
    with TestClient(app, follow_redirects=False) as client:
        yield client
