"""Price overrides by effective date: each event priced by the override in force at its
timestamp; tiers, cache lifetimes and per-request units; no overlaps; audited changes.

Expected costs are worked out by hand from the rates (USD per million tokens).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.conftest import Tenant
from tests.ledger.conftest import LICENSE, ok, stored_events
from tests.ledger.conftest import bare_event as event
from tokenledger.audit.models import AuditEntry
from tokenledger.db import Database

URL = "/api/pricing/overrides/anthropic/claude-sonnet-4-5"


@pytest.fixture
def tenant(make_tenant: Callable[..., Tenant]) -> Tenant:
    return make_tenant(LICENSE)


def put(client: TestClient, headers: dict[str, str], **body: Any) -> Any:
    return client.put(URL, json=body, headers=headers)


def costs(client: TestClient, tenant: Tenant, *events: dict[str, Any]) -> dict[str, str]:
    body = ok(client, tenant.headers, *events)
    return {result["id"]: result["cost_usd"] for result in body["results"]}


def test_each_event_is_priced_by_the_override_in_force_at_its_timestamp(
    client: TestClient, database: Database, tenant: Tenant, admin_headers: dict[str, str]
) -> None:
    march = put(
        client,
        admin_headers,
        input="10",
        output="20",
        valid_from="2026-03-01T00:00:00Z",
        valid_until="2026-05-01T00:00:00Z",
    )
    assert march.status_code == 200, march.text
    may = put(client, admin_headers, input="1", output="2", valid_from="2026-05-01T00:00:00Z")
    assert may.status_code == 200, may.text
    tokens = {"input_tokens": 1000, "output_tokens": 100}
    found = costs(
        client,
        tenant,
        event("feb", "2026-02-28T23:59:59Z", **tokens),  # bundled: 1000*3 + 100*15 = 4500 µ$
        event("mar", "2026-03-01T00:00:00Z", **tokens),  # 1000*10 + 100*20 = 12000 µ$
        event("apr", "2026-04-30T23:59:59Z", **tokens),
        event("may", "2026-05-01T00:00:00Z", **tokens),  # 1000*1 + 100*2 = 1200 µ$
        event("nov", "2026-11-01T00:00:00Z", **tokens),
    )
    assert found == {
        "feb": "0.0045",
        "mar": "0.012",
        "apr": "0.012",
        "may": "0.0012",
        "nov": "0.0012",
    }
    stored = stored_events(database)
    assert stored["feb"].price_source == "genai-prices"
    assert stored["mar"].price_version == stored["apr"].price_version
    assert stored["mar"].price_version != stored["may"].price_version
    assert stored["may"].price_version.startswith("override:2026-05-01T00:00:00+00:00")


def test_a_new_price_ends_the_open_one_and_overlaps_are_refused(
    client: TestClient, database: Database, admin_headers: dict[str, str]
) -> None:
    first = put(client, admin_headers, input="5", output="6", valid_from="2026-03-01T00:00:00Z")
    assert first.status_code == 200, first.text
    later = put(client, admin_headers, input="7", output="8", valid_from="2026-06-01T00:00:00Z")
    assert later.status_code == 200, later.text
    listed = client.get("/api/pricing/overrides", headers=admin_headers).json()
    assert [(o["valid_from"], o["valid_until"], o["input"]) for o in listed] == [
        ("2026-03-01T00:00:00+00:00", "2026-06-01T00:00:00+00:00", "5"),
        ("2026-06-01T00:00:00+00:00", None, "7"),
    ]
    for body in (
        {"valid_from": "2026-02-01T00:00:00Z", "valid_until": "2026-04-01T00:00:00Z"},
        {"valid_from": "2026-01-01T00:00:00Z"},  # open-ended over both
        {"valid_from": "2026-04-01T00:00:00Z", "valid_until": "2026-07-01T00:00:00Z"},
    ):
        refused = put(client, admin_headers, input="9", output="9", **body)
        assert refused.status_code == 409, (body, refused.text)
        assert refused.json()["error"]["code"] == "overlapping_override"
    assert client.get("/api/pricing/overrides", headers=admin_headers).json() == listed
    # Before the first, within a gap: fine.
    early = put(
        client,
        admin_headers,
        input="1",
        output="1",
        valid_from="2026-01-01T00:00:00Z",
        valid_until="2026-03-01T00:00:00Z",
    )
    assert early.status_code == 200, early.text
    # The same start replaces that one's rates.
    again = put(client, admin_headers, input="2", output="2", valid_from="2026-01-01T00:00:00Z")
    assert again.status_code == 409  # open-ended now: would run over March
    again = put(
        client,
        admin_headers,
        input="2",
        output="2",
        valid_from="2026-01-01T00:00:00Z",
        valid_until="2026-03-01T00:00:00Z",
    )
    assert again.status_code == 200, again.text
    assert again.json()["input"] == "2"
    with database.session(write=False) as session:
        actions = session.scalars(
            select(AuditEntry.action)
            .where(AuditEntry.entity_type == "price_override")
            .order_by(AuditEntry.id)
        ).all()
    assert actions == [
        "price_override.set",
        "price_override.end",
        "price_override.set",
        "price_override.set",
        "price_override.set",
    ]
    removed = client.delete(
        URL, params={"valid_from": "2026-03-01T00:00:00Z"}, headers=admin_headers
    )
    assert removed.status_code == 204
    left = client.get("/api/pricing/overrides", headers=admin_headers).json()
    assert [o["valid_from"] for o in left] == [
        "2026-01-01T00:00:00+00:00",
        "2026-06-01T00:00:00+00:00",
    ]


def test_an_override_can_have_long_context_tiers(
    client: TestClient, tenant: Tenant, admin_headers: dict[str, str]
) -> None:
    response = put(
        client,
        admin_headers,
        input="3",
        output="15",
        cache_read="0.3",
        valid_from="2026-01-01T00:00:00Z",
        tiers=[
            {"above_prompt_tokens": 200000, "input": "6", "output": "22.5", "cache_read": "0.6"}
        ],
    )
    assert response.status_code == 200, response.text
    assert response.json()["tiers"] == [
        {"above_prompt_tokens": 200000, "input": "6", "output": "22.5", "cache_read": "0.6"}
    ]
    found = costs(
        client,
        tenant,
        # prompt 130000 + 60000 = 190000: base rates, 130000*3 + 60000*0.3 + 1000*15 µ$
        event("short", input_tokens=130000, cache_read_input_tokens=60000, output_tokens=1000),
        # prompt 150000 + 60000 = 210000 > 200000: every token at the tier,
        # 150000*6 + 60000*0.6 + 1000*22.5 = 900000 + 36000 + 22500 µ$
        event("long", input_tokens=150000, cache_read_input_tokens=60000, output_tokens=1000),
        # exactly 200000 is not above it
        event("edge", input_tokens=200000),
    )
    assert found == {"short": "0.423", "long": "0.9585", "edge": "0.60"}


def test_an_override_can_price_cache_lifetimes_and_requests(
    client: TestClient, database: Database, tenant: Tenant, admin_headers: dict[str, str]
) -> None:
    response = put(
        client,
        admin_headers,
        input="1",
        output="2",
        cache_write_5m="1.25",
        cache_write_1h="2",
        valid_from="2026-01-01T00:00:00Z",
        units={"requests_kcount": "5"},
    )
    assert response.status_code == 200, response.text
    found = costs(
        client,
        tenant,
        # 1000*1 + 100*1.25 + 300*2 µ$ + one request at $5 per 1000 (5000 µ$)
        event(
            "cached",
            input_tokens=1000,
            cache_creation={"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 300},
        ),
    )
    assert found == {"cached": "0.006725"}
    assert stored_events(database)["cached"].rates["requests_per_k"] == "5"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"valid_from": "2026-02-01T00:00:00Z", "valid_until": "2026-01-01T00:00:00Z"}, 422),
        ({"valid_from": "2026-02-01T00:00:00"}, 422),  # no time zone
        ({"tiers": [{"above_prompt_tokens": 10, "input": "2"}, {"above_prompt_tokens": 5}]}, 422),
        ({"tiers": [{"above_prompt_tokens": 10}]}, 422),
        ({"tiers": [{"above_prompt_tokens": 10, "input": "-1"}]}, 422),
        ({"units": {"input_mtok": "1"}}, 422),
        ({"units": {"no_such_unit": "1"}}, 422),
    ],
)
def test_malformed_dated_overrides_are_refused(
    client: TestClient, admin_headers: dict[str, str], body: dict[str, Any], code: int
) -> None:
    response = put(client, admin_headers, input="1", output="2", **body)
    assert response.status_code == code, response.text
    assert client.get("/api/pricing/overrides", headers=admin_headers).json() == []
