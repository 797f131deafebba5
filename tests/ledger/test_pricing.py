"""Each event is priced once, when written: provided, priced (library or override) or unpriced.

Expected costs are worked out here by hand from Anthropic's USD per million tokens
(claude-sonnet-4-5: input 3, output 15, 5-minute cache write 3.75, 1-hour write 6, cache
read 0.30; above 200k prompt tokens: 6, 22.50, 7.50, 12, 0.60). $X/MTok is X micro-USD a
token, so the sums below are in micro-USD.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import Tenant
from tests.ledger.conftest import AT, LICENSE, cli, monthly_rows, ok, stored_events
from tests.ledger.conftest import bare_event as event
from tokenledger.app import create_app
from tokenledger.config import Settings
from tokenledger.db import Database
from tokenledger.pricing.engine import LIBRARY_VERSION


@pytest.fixture
def tenant(make_tenant: Callable[..., Tenant]) -> Tenant:
    """An organization with one license, at 0.01 USD a credit."""
    return make_tenant(LICENSE)


def results_by_id(
    client: TestClient, tenant: Tenant, *events: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Send the events in one batch; each one's result, by its id."""
    body = ok(client, tenant.headers, *events)
    return {result["id"]: result for result in body["results"]}


def test_anthropic_usage_is_priced_with_its_own_meaning(
    client: TestClient, database: Database, tenant: Tenant
) -> None:
    results = results_by_id(
        client,
        tenant,
        # input excludes the cache: 1000*3 + 500*15 + 1500*3.75 + 500*6 + 10000*0.3
        # = 3000 + 7500 + 5625 + 3000 + 3000 = 22125 micro-USD
        event(
            "split",
            input_tokens=1000,
            output_tokens=500,
            cache_creation_input_tokens=2000,
            cache_creation={"ephemeral_5m_input_tokens": 1500, "ephemeral_1h_input_tokens": 500},
            cache_read_input_tokens=10000,
        ),
        # no split given: every write is a 5-minute write: 3000 + 7500 + 2000*3.75 + 3000
        # = 21000
        event(
            "unsplit",
            input_tokens=1000,
            output_tokens=500,
            cache_creation_input_tokens=2000,
            cache_read_input_tokens=10000,
        ),
        # only the split: the writes are its sum; 1h writes alone: 2000*6 = 12000
        event("only-1h", cache_creation={"ephemeral_1h_input_tokens": 2000}),
        # a dated model id and another spelling of the provider price the same way
        event(
            "dated",
            provider="Anthropic",
            model="claude-sonnet-4-5-20250929",
            input_tokens=1000,
            output_tokens=500,
        ),
    )
    assert results["split"]["cost_usd"] == "0.022125"
    assert results["split"]["credits"] == "2.2125"  # 0.022125 / 0.01
    assert results["unsplit"]["cost_usd"] == "0.021"
    assert results["only-1h"]["cost_usd"] == "0.012"
    assert results["dated"]["cost_usd"] == "0.0105"  # 3000 + 7500
    assert {r["pricing"] for r in results.values()} == {"priced"}

    stored = stored_events(database)
    split = stored["split"]
    assert (split.input_tokens, split.cache_creation_input_tokens, split.cache_write_1h_tokens) == (
        1000,
        2000,
        500,
    )
    assert split.cost_nano == 22_125_000
    assert split.price_source == "genai-prices"
    assert split.price_version == LIBRARY_VERSION
    assert split.priced_model == "claude-sonnet-4-5"
    assert split.rates == {
        "input": "3",
        "output": "15",
        "cache_write_5m": "3.75",
        "cache_write_1h": "6",
        "cache_read": "0.3",
    }
    assert stored["only-1h"].cache_creation_input_tokens == 2000
    assert stored["dated"].provider == "anthropic"
    assert stored["dated"].priced_model == "claude-sonnet-4-5"


def test_long_context_prices_every_token_at_the_higher_rate(
    client: TestClient, database: Database, tenant: Tenant
) -> None:
    results = results_by_id(
        client,
        tenant,
        # prompt = 150000 + 40000 + 10000 = 200000: not above the threshold
        # 150000*3 + 1000*15 + 10000*3.75 + 40000*0.3 = 450000 + 15000 + 37500 + 12000
        event(
            "at-200k",
            input_tokens=150_000,
            output_tokens=1000,
            cache_creation_input_tokens=10_000,
            cache_read_input_tokens=40_000,
        ),
        # one more cache write makes 200001: every token at the long-context rates
        # 150000*6 + 1000*22.5 + 10001*7.5 + 40000*0.6 = 900000 + 22500 + 75007.5 + 24000
        event(
            "over-200k",
            input_tokens=150_000,
            output_tokens=1000,
            cache_creation_input_tokens=10_001,
            cache_read_input_tokens=40_000,
        ),
        # 1h writes at the long-context 1h rate: 200001*12 = 2400012
        event("over-200k-1h", cache_creation={"ephemeral_1h_input_tokens": 200_001}),
    )
    assert results["at-200k"]["cost_usd"] == "0.5145"
    assert results["over-200k"]["cost_usd"] == "1.0215075"
    assert results["over-200k"]["credits"] == "102.15075"
    assert results["over-200k-1h"]["cost_usd"] == "2.400012"
    stored = stored_events(database)
    assert "tier" not in stored["at-200k"].rates
    assert stored["over-200k"].rates == {
        "input": "6",
        "output": "22.5",
        "cache_write_5m": "7.5",
        "cache_write_1h": "12",
        "cache_read": "0.6",
        "tier": "prompt_tokens>200000",
    }


def test_a_provided_cost_wins(client: TestClient, database: Database, tenant: Tenant) -> None:
    results = results_by_id(
        client,
        tenant,
        event("known", input_tokens=1000, cost_usd="0.123456789"),
        event("unknown-model", model="in-house-llm", input_tokens=1000, cost_usd="2"),
        event("free", input_tokens=1000, cost_usd="0"),
    )
    assert results["known"] | {"id": None} == {
        "id": None,
        "organization": tenant.slug,
        "status": "created",
        "cost_usd": "0.123456789",
        "credits": "12.345679",  # 12.3456789 rounded half to even to a micro-credit
        "pricing": "provided",
    }
    assert results["unknown-model"]["cost_usd"] == "2.00"
    assert results["unknown-model"]["credits"] == "200.0"
    assert results["free"]["cost_usd"] == "0.00"
    assert results["free"]["pricing"] == "provided"
    stored = stored_events(database)
    assert stored["known"].cost_nano == 123_456_789
    assert stored["known"].credits_micro == 12_345_679
    assert (stored["known"].price_source, stored["known"].rates) == ("caller", None)


def test_an_unknown_model_is_unpriced_never_zero_and_listed(
    client: TestClient,
    database: Database,
    tenant: Tenant,
    admin_headers: dict[str, str],
    viewer_headers: dict[str, str],
) -> None:
    results = results_by_id(
        client,
        tenant,
        event("u1", model="claude-imaginary-9", input_tokens=1000),
        event("u2", model="claude-imaginary-9", input_tokens=5, timestamp="2026-06-16T00:00:00Z"),
        event("u3", provider="nobody", model="claude-sonnet-4-5", input_tokens=5),
        event("p", input_tokens=1000),
    )
    for id in ("u1", "u2", "u3"):
        assert results[id]["pricing"] == "unpriced"
        assert results[id]["cost_usd"] is None
        assert results[id]["credits"] is None
    stored = stored_events(database)
    assert stored["u1"].cost_nano is None
    assert stored["u1"].credits_micro is None
    assert stored["u1"].license_id == tenant.license_id  # still the license's usage
    assert stored["u1"].price_source is None

    for headers in (admin_headers, viewer_headers):
        response = client.get("/api/pricing/unpriced", headers=headers)
        assert response.status_code == 200, response.text
        listed = {(row["provider"], row["model"]): row for row in response.json()}
        assert set(listed) == {("anthropic", "claude-imaginary-9"), ("nobody", "claude-sonnet-4-5")}
        imaginary = listed[("anthropic", "claude-imaginary-9")]
        assert imaginary["events"] == 2
        assert (imaginary["first_seen"], imaginary["last_seen"]) == (AT, "2026-06-16T00:00:00Z")
    assert client.get("/api/pricing/unpriced").status_code == 401
    assert client.get("/api/pricing/unpriced", headers=tenant.headers).status_code == 403


def test_an_override_wins_from_then_on_and_history_is_never_rewritten(
    client: TestClient,
    database: Database,
    tenant: Tenant,
    admin_headers: dict[str, str],
    viewer_headers: dict[str, str],
) -> None:
    ok(
        client,
        tenant.headers,
        event("before", input_tokens=1000, output_tokens=100),  # 3000 + 1500 = 4500
        event("imaginary-before", model="claude-imaginary-9", input_tokens=1000),
    )
    # In force for every event stamped from 2026 on (the fixed AT is in June 2026).
    rates = {
        "input": "10",
        "output": "20",
        "cache_write_5m": "12.5",
        "cache_write_1h": 16,
        "cache_read": "0.000000001",
        "valid_from": "2026-01-01T00:00:00Z",
    }
    response = client.put(
        "/api/pricing/overrides/anthropic/claude-sonnet-4-5", json=rates, headers=viewer_headers
    )
    assert response.status_code == 403
    for model in ("claude-sonnet-4-5", "Claude-Imaginary-9"):
        response = client.put(
            f"/api/pricing/overrides/anthropic/{model}", json=rates, headers=admin_headers
        )
        assert response.status_code == 200, response.text
    listed = client.get("/api/pricing/overrides", headers=viewer_headers).json()
    assert [row["model"] for row in listed] == ["claude-imaginary-9", "claude-sonnet-4-5"]
    assert listed[1]["cache_write_1h"] == "16"

    results = results_by_id(
        client,
        tenant,
        # 1000*10 + 100*20 + 100*12.5 + 100*16 + 1000*0.000000001
        # = 10000 + 2000 + 1250 + 1600 + 0.000001 micro-USD = 14850.000001 micro-USD
        # = 14850000.001 nano-USD, rounded to 14850000
        event(
            "after",
            input_tokens=1000,
            output_tokens=100,
            cache_creation={"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 100},
            cache_read_input_tokens=1000,
        ),
        # the override also prices a model the library does not know: 1000*10
        event("imaginary-after", model="claude-imaginary-9", input_tokens=1000),
        # and holds even above the library's long-context threshold: 300000*10
        event("long", input_tokens=300_000),
    )
    assert results["after"]["cost_usd"] == "0.01485"
    assert results["after"]["pricing"] == "priced"
    assert results["imaginary-after"]["cost_usd"] == "0.01"
    assert results["long"]["cost_usd"] == "3.00"

    stored = stored_events(database)
    assert stored["before"].cost_nano == 4_500_000
    assert stored["before"].price_source == "genai-prices"
    assert stored["imaginary-before"].pricing == "unpriced"
    after = stored["after"]
    assert after.price_source == "override"
    assert after.price_version is not None
    assert after.price_version.startswith("override:")
    assert after.priced_model == "claude-sonnet-4-5"
    assert after.rates == {
        "input": "10",
        "output": "20",
        "cache_write_5m": "12.5",
        "cache_write_1h": "16",
        "cache_read": "0.000000001",
    }

    # A change of the override and its removal: stored events keep their cost and rates.
    before = monthly_rows(database, tenant.org_id)["2026-06"]
    response = client.put(
        "/api/pricing/overrides/anthropic/claude-sonnet-4-5",
        json={"input": "1", "output": "2", "valid_from": "2026-01-01T00:00:00Z"},
        headers=admin_headers,
    )
    assert response.status_code == 200, response.text
    body = ok(client, tenant.headers, event("changed", input_tokens=1000))
    assert body["results"][0]["cost_usd"] == "0.001"
    response = client.delete(
        "/api/pricing/overrides/anthropic/claude-sonnet-4-5", headers=admin_headers
    )
    assert response.status_code == 204
    body = ok(client, tenant.headers, event("library-again", input_tokens=1000))
    assert body["results"][0]["cost_usd"] == "0.003"
    stored_now = stored_events(database)
    for id in ("before", "after", "imaginary-before", "imaginary-after", "long"):
        assert stored_now[id].cost_nano == stored[id].cost_nano, id
        assert stored_now[id].rates == stored[id].rates, id
        assert stored_now[id].price_version == stored[id].price_version, id
    # The month grew by the two new events only: 1000 * $1/MTok and 1000 * $3/MTok.
    grown = monthly_rows(database, tenant.org_id)["2026-06"]
    assert {name: grown[name] - before[name] for name in grown} == {
        **dict.fromkeys(grown, 0),
        "input_tokens": 2000,
        "cost_nano": 1_000_000 + 3_000_000,
        "api_calls": 2,
        "event_count": 2,
    }
    assert stored_now["changed"].price_version != after.price_version


def test_an_override_for_a_model_id_with_a_slash(
    client: TestClient,
    database: Database,
    make_tenant: Callable[..., Tenant],
    admin_headers: dict[str, str],
) -> None:
    tenant = make_tenant()
    url = "/api/pricing/overrides/openrouter/meta-llama/Llama-3.1-70B-Instruct"
    price = {"input": "1", "output": "2", "valid_from": "2026-01-01T00:00:00Z"}
    response = client.put(url, json=price, headers=admin_headers)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "meta-llama/llama-3.1-70b-instruct"
    model = {"provider": "openrouter", "model": "meta-llama/llama-3.1-70b-instruct"}
    body = ok(client, tenant.headers, event("slash", **model, input_tokens=10**6))
    assert body["results"][0]["cost_usd"] == "1.00"
    assert client.delete(url, headers=admin_headers).status_code == 204
    assert client.get("/api/pricing/overrides", headers=admin_headers).json() == []


def test_override_rates_are_validated(
    client: TestClient, database: Database, admin_headers: dict[str, str]
) -> None:
    url = "/api/pricing/overrides/anthropic/claude-sonnet-4-5"
    for case, rates in [
        ("negative", {"input": "-1", "output": "15"}),
        ("not a number", {"input": "cheap", "output": "15"}),
        ("NaN", {"input": "NaN", "output": "15"}),
        ("boolean", {"input": True, "output": "15"}),
        ("boolean cache rate", {"input": "3", "output": "15", "cache_read": False}),
        ("below a nano-dollar per MTok", {"input": "0.0000000001", "output": "15"}),
        # Reported from outside: past Decimal's exponent range it became 0 and was stored.
        ("far below a nano-dollar", {"input": "3", "output": "1e-999999999"}),
        ("far below a nano-dollar, cache", {"input": "3", "output": "15", "cache_read": "1E-99"}),
        ("no output", {"input": "3"}),
        ("unknown rate", {"input": "3", "output": "15", "batch": "1"}),
    ]:
        response = client.put(url, json=rates, headers=admin_headers)
        assert response.status_code == 422, (case, response.text)
    assert client.get("/api/pricing/overrides", headers=admin_headers).json() == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_prices_cli_sets_lists_and_unsets_overrides(
    database_url: str,
    settings: Settings,
    database: Database,
    tenant: Tenant,
    tmp_path: Path,
) -> None:
    # The command line is another process: the server sees its changes within
    # cache_seconds; with 0 at once, so that the next request is priced with them.
    client = TestClient(create_app(settings.model_copy(update={"cache_seconds": 0})))
    set_args = ["--model", "claude-sonnet-4-5", "--input", "10", "--output", "20"]
    dated = ["--valid-from", "2026-01-01", "--cache-read", "0.5"]
    done = cli(database_url, tmp_path, "prices", "set", *set_args, *dated)
    assert done.returncode == 0, done.stderr
    done = cli(database_url, tmp_path, "prices", "list")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "anthropic/claude-sonnet-4-5 from 2026-01-01T00:00:00+00:00 until open-ended: "
        "input 10, output 20, cache_read 0.5 (USD per million tokens, units per 1000)"
    )

    # 1000*10 + 100*20 + 1000*0.5 = 12500 micro-USD
    body = ok(
        client,
        tenant.headers,
        event("cli", input_tokens=1000, output_tokens=100, cache_read_input_tokens=1000),
    )
    assert body["results"][0]["cost_usd"] == "0.0125"
    assert stored_events(database)["cli"].price_source == "override"

    done = cli(database_url, tmp_path, "prices", "unset", "--model", "claude-sonnet-4-5")
    assert done.returncode == 0, done.stderr
    # the library again: 1000*3 + 100*15 + 1000*0.3 = 4800
    body = ok(
        client,
        tenant.headers,
        event("lib", input_tokens=1000, output_tokens=100, cache_read_input_tokens=1000),
    )
    assert body["results"][0]["cost_usd"] == "0.0048"
    assert stored_events(database)["cli"].cost_nano == 12_500_000
