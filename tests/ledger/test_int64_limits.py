"""Every documented limit keeps every sum the ledger stores inside int64, and a write that
would still carry one past it is refused whole (409 ledger_limit), never a 500 or a float.

Reported from outside: ten events of the then documented maximum cost_usd ($10^9) in one
organization and month turned the SQLite rollup into a float and broke reconcile
(PostgreSQL: 500); with cost_per_credit 0.000000001 an event over about $9,200 was a 500;
token counts inside a `usage` object skipped the 10^9 bound.
"""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text, update

from tests.conftest import NOW
from tests.ledger.conftest import (
    AT,
    LICENSE,
    bare_event,
    credits_used_micro,
    monthly_rows,
    ok,
    post,
    snapshot,
    write,
)
from tokenledger.budgets.models import Reservation
from tokenledger.db import Database
from tokenledger.ledger.reconcile import reconcile
from tokenledger.licenses.models import License
from tokenledger.usage.models import TokenUsageMonthly

INT64_MAX = 2**63 - 1  # the largest integer SQLite and PostgreSQL's bigint hold
MAX_EVENT_NANO = 10**6 * 10**9  # the documented $1,000,000 of one event, in nano-USD


def _sqlite_types(database: Database, org_id: int) -> set[str]:
    """SQLite's storage class of every stored rollup sum of the organization ('integer')."""
    if database.dialect_name != "sqlite":
        return {"integer"}
    with database.engine.connect() as connection:
        return {
            row[0]
            for row in connection.execute(
                text(
                    "SELECT typeof(cost_nano) FROM token_usage_monthly WHERE organization_id = :o "
                    "UNION SELECT typeof(cost_nano) FROM usage_daily WHERE organization_id = :o"
                ),
                {"o": org_id},
            )
        }


def test_the_old_maximum_cost_is_refused_and_ten_events_of_the_new_one_reconcile(
    client, database, make_tenant
):
    tenant = make_tenant(LICENSE)
    refused = post(client, tenant.headers, bare_event("huge", cost_usd="1000000000"))
    assert refused.status_code == 422, refused.text
    assert "1000000" in refused.text
    events = [bare_event(f"max-{n}", cost_usd="1000000") for n in range(10)]
    body = ok(client, tenant.headers, *events)
    assert [r["cost_usd"] for r in body["results"]] == ["1000000.00"] * 10
    # 0.01 USD a credit: 10^8 credits per event.
    assert [r["credits"] for r in body["results"]] == ["100000000.0"] * 10
    assert monthly_rows(database, tenant.org_id)["2026-06"]["cost_nano"] == 10 * MAX_EVENT_NANO
    assert _sqlite_types(database, tenant.org_id) == {"integer"}
    assert credits_used_micro(database, tenant.license_id) == 10 * 10**8 * 10**6
    with database.session(write=False) as session:
        assert reconcile(session, fix=False) == []


def test_a_cost_per_credit_below_the_minimum_is_refused(client, admin_headers, make_tenant):
    tenant = make_tenant()
    for rate in ("0.000000001", "0.00009999", "1e-999999999"):
        response = client.post(
            "/api/licenses",
            json={"organization_id": tenant.org_id, "credits_total": "10", "cost_per_credit": rate},
            headers=admin_headers,
        )
        assert response.status_code == 422, (rate, response.text)
    schema = client.get("/openapi.json").json()["components"]["schemas"]["LicenseCreate"]
    rate_schema = schema["properties"]["cost_per_credit"]
    options = rate_schema.get("anyOf", [rate_schema])
    assert any(option.get("minimum") == 0.0001 for option in options), rate_schema


def test_the_largest_event_at_the_smallest_cost_per_credit_fits(client, database, make_tenant):
    tenant = make_tenant({**LICENSE, "cost_per_credit": "0.0001"})
    body = ok(client, tenant.headers, bare_event("big", cost_usd="1000000"))
    # $1,000,000 / $0.0001 = 10^10 credits = 10^16 micro-credits, by hand.
    assert body["results"][0]["credits"] == "10000000000.0"
    assert credits_used_micro(database, tenant.license_id) == 10**16


def test_credits_past_int64_of_a_license_from_before_the_minimum_are_a_409(
    client, database, make_tenant
):
    """A license stored with a cost per credit of $0.000000001 (allowed then): an event
    of $10,000 would be 10^19 micro-credits, past int64: a 409, not a 500."""
    tenant = make_tenant(LICENSE)
    with write(database) as session:
        session.execute(
            update(License).where(License.id == tenant.license_id).values(cost_per_credit_nano=1)
        )
    before = snapshot(database)
    response = post(client, tenant.headers, bare_event("over", cost_usd="10000"))
    assert response.status_code == 409, response.text
    assert response.json()["error"]["code"] == "ledger_limit"
    assert snapshot(database) == before
    body = ok(client, tenant.headers, bare_event("fits", cost_usd="9000"))
    assert body["results"][0]["credits"] == "9000000000000.0"  # 9000 / 10^-9


@pytest.mark.parametrize("tokens", [10**9 + 1, 10**14, 2**63 - 1, 2**64])
def test_token_counts_inside_a_usage_object_have_the_flat_bound(
    client, database, make_tenant, tokens
):
    tenant = make_tenant(LICENSE)
    before = snapshot(database)
    for usage in (
        {"input_tokens": tokens, "output_tokens": 1},
        {"prompt_tokens": tokens, "completion_tokens": 1},
        {"input_tokens": 10, "output_tokens": 1, "cache_read_input_tokens": tokens},
    ):
        event = {"id": "u", "timestamp": AT, "model": "claude-sonnet-4-5", "usage": usage}
        if "prompt_tokens" in usage:
            event.update(model="gpt-4o", provider="openai")
        response = post(client, tenant.headers, event)
        assert response.status_code == 422, (usage, response.text)
    assert snapshot(database) == before
    at_bound = {"input_tokens": 10**9, "output_tokens": 10**9}
    ok(client, tenant.headers, {"id": "b", "timestamp": AT, "model": "x-model", "usage": at_bound})


def test_holds_past_int64_are_a_409(client, database, make_tenant):
    tenant = make_tenant(LICENSE)  # soft enforcement: holds may exceed what remains
    with write(database) as session:
        session.add(
            Reservation(
                id="res_history",
                organization_id=tenant.org_id,
                license_id=tenant.license_id,
                amount_nano=INT64_MAX - MAX_EVENT_NANO + 1,
                status="held",
                created_at=NOW,
                expires_at=NOW + timedelta(days=365),
            )
        )
    hold = {"max_cost_usd": "1000000"}
    response = client.post("/api/v1/reservations", json=hold, headers=tenant.headers)
    assert response.status_code == 409, response.text
    assert response.json()["error"]["code"] == "ledger_limit"
    hold = {"max_cost_usd": "999999.999999999"}
    response = client.post("/api/v1/reservations", json=hold, headers=tenant.headers)
    assert response.status_code == 201, response.text


_examples = itertools.count()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    headroom=st.integers(min_value=0, max_value=3 * MAX_EVENT_NANO),
    other_month=st.booleans(),
    batches=st.lists(
        st.lists(
            st.tuples(
                st.sampled_from([0, 1, MAX_EVENT_NANO - 1, MAX_EVENT_NANO])
                | st.integers(min_value=0, max_value=MAX_EVENT_NANO),
                st.sampled_from([0, 10**9]),
            ),
            min_size=1,
            max_size=4,
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_batches_at_the_limits_are_stored_exactly_or_refused_whole(
    client: TestClient,
    database: Database,
    make_tenant: Any,
    headroom: int,
    other_month: bool,
    batches: list[list[tuple[int, int]]],
) -> None:
    """An organization whose history (in this month or another) leaves `headroom` nano-USD
    below int64; batches of events of up to the largest cost and token counts. Each batch
    is stored whole when every sum still fits (and then the sums are exact integers), or
    refused whole with 409: a plain model in Python integers says which."""
    n = next(_examples)
    tenant = make_tenant({**LICENSE, "cost_per_credit": "1000000"})
    month = "2026-05" if other_month else "2026-06"
    history = INT64_MAX - headroom
    with write(database) as session:
        session.add(
            TokenUsageMonthly(
                organization_id=tenant.org_id,
                year_month=month,
                input_tokens=0,
                output_tokens=0,
                cache_creation_tokens=0,
                cache_read_tokens=0,
                cost_nano=history,
                api_calls=0,
                refresh_count=0,
                event_count=1,
                unpriced_events=0,
            )
        )
    cost_total, tokens_total = history, 0
    for b, batch in enumerate(batches):
        events = [
            bare_event(
                f"p{n}-{b}-{i}",
                cost_usd=f"{cost // 10**9}.{cost % 10**9:09d}",
                input_tokens=tokens,
            )
            for i, (cost, tokens) in enumerate(batch)
        ]
        added = sum(cost for cost, _ in batch)
        before = snapshot(database)
        response = post(client, tenant.headers, *events)
        if cost_total + added <= INT64_MAX:
            assert response.status_code == 200, response.text
            cost_total += added
            tokens_total += sum(tokens for _, tokens in batch)
        else:
            assert response.status_code == 409, response.text
            assert response.json()["error"]["code"] == "ledger_limit"
            assert snapshot(database) == before
    rows = monthly_rows(database, tenant.org_id)
    assert sum(row["cost_nano"] for row in rows.values()) == cost_total
    assert sum(row["input_tokens"] for row in rows.values()) == tokens_total
    assert _sqlite_types(database, tenant.org_id) == {"integer"}


def test_the_schema_states_the_field_bounds(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]

    def numbers(prop: dict[str, Any]) -> list[dict[str, Any]]:
        found, todo = [], [prop]
        while todo:
            item = todo.pop()
            todo += item.get("anyOf", [])
            if item.get("type") in ("number", "integer"):
                found.append(item)
        return found

    event = schemas["UsageEventIn"]["properties"]
    assert [n["maximum"] for n in numbers(event["cost_usd"])] == [1_000_000]
    assert [n["maximum"] for n in numbers(event["input_tokens"])] == [10**9]
    assert "1000000000" in event["usage"]["description"]
    hold = schemas["ReservationCreate"]["properties"]["max_cost_usd"]
    assert [n["maximum"] for n in numbers(hold)] == [1_000_000]
