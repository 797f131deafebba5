"""Usage objects as the providers' SDKs build them, sent over HTTP and priced by hand.

Objects are made with the anthropic, openai and google-genai packages' own classes and
serialized as an application would (``model_dump(mode="json")``). Published rates, USD per
million tokens ($X/MTok is X micro-USD a token, so the sums below are in micro-USD):

* claude-sonnet-4-5: input 3, output 15, 5-minute cache write 3.75, 1-hour write 6, cache
  read 0.30, web search $10 per 1000 (10,000 micro-USD a search); above 200k prompt tokens
  6, 22.50, 7.50, 12, 0.60. Message Batches: half of each token rate (1.50, 7.50, 1.875,
  3, 0.15); searches stay at $10 per 1000.
* gpt-4o: input 2.50, cached input 1.25, output 10.
* gpt-4.1: input 2, cached input 0.50, output 8.
* o3: input 2, cached input 0.50, output 8; reasoning tokens are output tokens.
* gemini-2.5-flash: input 0.30, cached input 0.03, output (thinking included) 2.50.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anthropic.types as anthropic_types
import pytest
from fastapi.testclient import TestClient
from google.genai import types as gemini_types
from openai.types.completion_usage import (
    CompletionTokensDetails,
    CompletionUsage,
    PromptTokensDetails,
)
from openai.types.responses import ResponseUsage
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

from tests.conftest import Tenant
from tests.ledger.conftest import AT, LICENSE, monthly_rows, ok, post, snapshot, stored_events
from tokenledger.db import Database
from tokenledger.ledger.providers import reread

# Message Batches prices exist in the data from 2026-10-14 on.
AT_BATCH = "2026-11-20T12:00:00Z"


@pytest.fixture
def tenant(make_tenant: Callable[..., Tenant]) -> Tenant:
    return make_tenant(LICENSE)


def one(client: TestClient, tenant: Tenant, event: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = ok(client, tenant.headers, event)["results"][0]
    return result


def claude_usage(**fields: Any) -> dict[str, Any]:
    """message.usage.model_dump() of a real anthropic.types.Usage."""
    dumped: dict[str, Any] = anthropic_types.Usage(**fields).model_dump(mode="json")
    return dumped


# 1000 in, 500 out, writes 1500 (5m) + 500 (1h), 10000 reads, 2 web searches
CLAUDE_CALL: dict[str, Any] = {
    "input_tokens": 1000,
    "output_tokens": 500,
    "cache_creation_input_tokens": 2000,
    "cache_creation": anthropic_types.CacheCreation(
        ephemeral_5m_input_tokens=1500, ephemeral_1h_input_tokens=500
    ),
    "cache_read_input_tokens": 10_000,
    "server_tool_use": anthropic_types.ServerToolUsage(web_search_requests=2, web_fetch_requests=1),
    "service_tier": "standard",
    "inference_geo": "us",
    "speed": "standard",
    "output_tokens_details": {"thinking_tokens": 120},
}


def test_claude_usage_model_dump_merged_into_a_flat_event_is_accepted_and_fully_priced(
    client: TestClient, database: Database, tenant: Tenant
) -> None:
    usage = claude_usage(**CLAUDE_CALL)
    # 1000*3 + 500*15 + 1500*3.75 + 500*6 + 10000*0.3 + 2 searches * 10000
    # = 3000 + 7500 + 5625 + 3000 + 3000 + 20000 = 42125 micro-USD
    merged = {"id": "flat", "timestamp": AT, "model": "claude-sonnet-4-5", **usage}
    result = one(client, tenant, merged)
    assert (result["pricing"], result["cost_usd"]) == ("priced", "0.042125")
    # the same object as `usage`, untouched: the same cost
    nested = {"id": "nested", "timestamp": AT, "model": "claude-sonnet-4-5", "usage": usage}
    result = one(client, tenant, nested)
    assert (result["pricing"], result["cost_usd"]) == ("priced", "0.042125")
    stored = stored_events(database)
    assert stored["nested"].provider == "anthropic"
    assert stored["nested"].usage_object == {"usage": usage, "shape": "anthropic"}
    # a later price fix re-reads what was stored: the same usage, flat or nested
    flat_reread = reread("anthropic", stored["flat"].usage_object)
    assert flat_reread == reread("anthropic", stored["nested"].usage_object)
    assert flat_reread.tokens.units == {"web_searches": 2, "output_reasoning_tokens": 120}
    for name in ("flat", "nested"):
        event = stored[name]
        assert (event.input_tokens, event.output_tokens) == (1000, 500)
        assert (event.cache_creation_input_tokens, event.cache_write_1h_tokens) == (2000, 500)
        assert event.cache_read_input_tokens == 10_000
        assert event.rates is not None
        assert event.rates["web_searches_kcount"] == "10"


def test_a_field_a_newer_sdk_adds_is_kept_and_a_billable_one_flags_the_event(
    client: TestClient, database: Database, tenant: Tenant, admin_headers: dict[str, str]
) -> None:
    usage = claude_usage(input_tokens=1000, output_tokens=100)
    usage["server_tool_use"] = {"web_search_requests": 0, "code_execution_requests": 3}
    usage["carbon_grams"] = 0.4  # not a count of billable units: kept, ignored
    event = {"id": "newer", "timestamp": AT, "model": "claude-sonnet-4-5", "usage": usage}
    result = one(client, tenant, event)
    # the tokens are priced (1000*3 + 100*15 = 4500 micro-USD), the executions are not
    assert (result["pricing"], result["cost_usd"]) == ("partially_priced", "0.0045")
    stored = stored_events(database)["newer"]
    assert stored.usage_object == {"usage": usage, "shape": "anthropic"}
    assert stored.unpriced_units == "usage.server_tool_use.code_execution_requests"
    # a unit the SDK knows but the price data has no rate for: deepseek-chat searches
    flat = {
        "id": "search",
        "timestamp": AT,
        "provider": "deepseek",
        "model": "deepseek-chat",
        "input_tokens": 1_000_000,
        "server_tool_use": {"web_search_requests": 1},
    }
    result = one(client, tenant, flat)
    # 12:00 UTC is deepseek's standard hours: $0.27 for the million input tokens
    assert (result["pricing"], result["cost_usd"]) == ("partially_priced", "0.27")
    listed = client.get("/api/pricing/unpriced", headers=admin_headers).json()
    by_model = {(row["provider"], row["model"]): row for row in listed}
    assert by_model[("anthropic", "claude-sonnet-4-5")]["pricing"] == "partially_priced"
    assert by_model[("anthropic", "claude-sonnet-4-5")]["units"] == [
        "usage.server_tool_use.code_execution_requests"
    ]
    assert by_model[("deepseek", "deepseek-chat")]["units"] == ["web_searches"]
    # never counted as a complete cost: both are in the month's unpriced events
    month = monthly_rows(database, tenant.org_id)["2026-06"]
    assert month["unpriced_events"] == 2
    assert month["cost_nano"] == 4_500_000 + 270_000_000


def test_a_typo_at_the_event_level_is_still_refused(
    client: TestClient, database: Database, tenant: Tenant
) -> None:
    before = snapshot(database)
    for typo in ({"input_token": 5}, {"server_tool_uses": {}}, {"usage": {"prompt_tokens": 1}}):
        event = {"id": "typo", "timestamp": AT, "model": "claude-sonnet-4-5", **typo}
        if "usage" in typo:
            event["input_tokens"] = 5  # both kinds of counts at once
        response = post(client, tenant.headers, event)
        assert response.status_code == 422, (typo, response.text)
    oversized = {"prompt_tokens": 1, "completion_tokens": 1, "padding": "x" * 9000}
    event = {"id": "big", "timestamp": AT, "model": "gpt-4o", "usage": oversized}
    response = post(client, tenant.headers, event)
    assert response.status_code == 422
    assert "8192 bytes" in response.text
    unreadable = {"id": "odd", "timestamp": AT, "model": "gpt-4o", "usage": {"tokens": 5}}
    assert post(client, tenant.headers, unreadable).status_code == 422
    assert snapshot(database) == before


def test_the_one_hour_split_and_its_absence(client: TestClient, tenant: Tenant) -> None:
    with_split = claude_usage(
        input_tokens=0,
        output_tokens=0,
        cache_creation_input_tokens=1000,
        cache_creation=anthropic_types.CacheCreation(
            ephemeral_5m_input_tokens=0, ephemeral_1h_input_tokens=1000
        ),
    )
    # 1000 one-hour writes at $6/MTok
    event = {"id": "1h", "timestamp": AT, "model": "claude-sonnet-4-5", "usage": with_split}
    assert one(client, tenant, event)["cost_usd"] == "0.006"
    # without the split Anthropic's total says nothing of lifetimes: 5-minute writes
    without = claude_usage(input_tokens=0, output_tokens=0, cache_creation_input_tokens=1000)
    event = {"id": "total", "timestamp": AT, "model": "claude-sonnet-4-5", "usage": without}
    assert one(client, tenant, event)["cost_usd"] == "0.00375"


def test_claude_long_context_and_batch(client: TestClient, tenant: Tenant) -> None:
    long = claude_usage(input_tokens=150_001, output_tokens=1000, cache_read_input_tokens=50_000)
    # 200_001 prompt tokens: the higher rates for all tokens
    # 150001*6 + 1000*22.5 + 50000*0.6 = 900006 + 22500 + 30000 = 952506 micro-USD
    event = {"id": "long", "timestamp": AT, "model": "claude-sonnet-4-5", "usage": long}
    assert one(client, tenant, event)["cost_usd"] == "0.952506"
    batch = claude_usage(**{**CLAUDE_CALL, "service_tier": "batch"})
    # 1000*1.5 + 500*7.5 + 1500*1.875 + 500*3 + 10000*0.15 + 2 searches * 10000
    # = 1500 + 3750 + 2812.5 + 1500 + 1500 + 20000 = 31062.5 micro-USD
    event = {"id": "batch", "timestamp": AT_BATCH, "model": "claude-sonnet-4-5", "usage": batch}
    assert one(client, tenant, event)["cost_usd"] == "0.0310625"
    # the same call at the standard tier: 42125 micro-USD
    standard = claude_usage(**CLAUDE_CALL)
    event = {"id": "std", "timestamp": AT_BATCH, "model": "claude-sonnet-4-5", "usage": standard}
    assert one(client, tenant, event)["cost_usd"] == "0.042125"


def chat_usage(prompt: int, completion: int, cached: int = 0, reasoning: int = 0) -> Any:
    return CompletionUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached, audio_tokens=0),
        completion_tokens_details=CompletionTokensDetails(
            reasoning_tokens=reasoning,
            audio_tokens=0,
            accepted_prediction_tokens=0,
            rejected_prediction_tokens=0,
        ),
    ).model_dump(mode="json")


def responses_usage(input_tokens: int, output: int, cached: int = 0, reasoning: int = 0) -> Any:
    return ResponseUsage(
        input_tokens=input_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=cached, cache_write_tokens=0),
        output_tokens=output,
        output_tokens_details=OutputTokensDetails(reasoning_tokens=reasoning),
        total_tokens=input_tokens + output,
    ).model_dump(mode="json")


@pytest.mark.parametrize(
    ("model", "usage", "cost_usd", "stored_tokens"),
    [
        # gpt-4o Chat Completions: 2000 prompt tokens of which 1024 cached, 300 out:
        # 976*2.5 + 1024*1.25 + 300*10 = 2440 + 1280 + 3000 = 6720 micro-USD
        ("gpt-4o", chat_usage(2000, 300, cached=1024), "0.00672", (976, 300, 1024)),
        # gpt-4o Responses, the same call
        ("gpt-4o", responses_usage(2000, 300, cached=1024), "0.00672", (976, 300, 1024)),
        # gpt-4.1 Responses: 5000 in of which 4096 cached, 200 out:
        # 904*2 + 4096*0.5 + 200*8 = 1808 + 2048 + 1600 = 5456 micro-USD
        ("gpt-4.1", responses_usage(5000, 200, cached=4096), "0.005456", (904, 200, 4096)),
        ("gpt-4.1", chat_usage(5000, 200, cached=4096), "0.005456", (904, 200, 4096)),
        # o3 with 4000 reasoning tokens inside 5000 completion tokens, 1000 prompt, 500 cached:
        # 500*2 + 500*0.5 + 5000*8 = 1000 + 250 + 40000 = 41250 micro-USD
        ("o3", chat_usage(1000, 5000, cached=500, reasoning=4000), "0.04125", (500, 5000, 500)),
        (
            "o3",
            responses_usage(1000, 5000, cached=500, reasoning=4000),
            "0.04125",
            (500, 5000, 500),
        ),
    ],
)
def test_openai_usage_objects_with_cached_and_reasoning_tokens(
    client: TestClient,
    database: Database,
    tenant: Tenant,
    model: str,
    usage: dict[str, Any],
    cost_usd: str,
    stored_tokens: tuple[int, int, int],
) -> None:
    # no provider given: gpt-* and o3 are OpenAI's
    event = {"id": "call", "timestamp": AT, "model": model, "usage": usage}
    result = one(client, tenant, event)
    assert (result["pricing"], result["cost_usd"]) == ("priced", cost_usd)
    stored = stored_events(database)["call"]
    assert stored.provider == "openai"
    assert stored.priced_model == model
    assert (stored.input_tokens, stored.output_tokens, stored.cache_read_input_tokens) == (
        stored_tokens
    )
    assert stored.usage_object is not None
    assert stored.usage_object["usage"] == usage
    again = reread(stored.provider, stored.usage_object)
    assert again.tokens.input_tokens == stored.input_tokens
    assert again.tokens.cache_read_input_tokens == stored.cache_read_input_tokens


def test_openai_priority_tier_from_the_response(client: TestClient, tenant: Tenant) -> None:
    # gpt-4o priority processing (from 2026-10-12): input 4.25, cached 2.125, output 17:
    # 976*4.25 + 1024*2.125 + 300*17 = 4148 + 2176 + 5100 = 11424 micro-USD
    event = {
        "id": "prio",
        "timestamp": AT_BATCH,
        "model": "gpt-4o",
        "usage": chat_usage(2000, 300, cached=1024),
        "service_tier": "priority",
    }
    assert one(client, tenant, event)["cost_usd"] == "0.011424"


def gemini_usage(**fields: Any) -> gemini_types.GenerateContentResponseUsageMetadata:
    return gemini_types.GenerateContentResponseUsageMetadata(**fields)


def test_gemini_usage_metadata_with_cached_content_and_thoughts(
    client: TestClient, database: Database, tenant: Tenant
) -> None:
    metadata = gemini_usage(
        prompt_token_count=10_000,
        cached_content_token_count=8000,
        candidates_token_count=500,
        thoughts_token_count=1500,
        total_token_count=12_000,
        prompt_tokens_details=[
            gemini_types.ModalityTokenCount(modality="TEXT", token_count=10_000)
        ],
        cache_tokens_details=[gemini_types.ModalityTokenCount(modality="TEXT", token_count=8000)],
    )
    # 2000*0.3 + 8000*0.03 + (500 + 1500)*2.5 = 600 + 240 + 5000 = 5840 micro-USD
    wire = metadata.model_dump(mode="json", by_alias=True, exclude_none=True)  # as on the wire
    dumped = metadata.model_dump(mode="json", exclude_none=True)  # the SDK's snake_case
    assert "promptTokenCount" in wire
    assert "prompt_token_count" in dumped
    for name, usage in (("wire", wire), ("snake", dumped)):
        event = {"id": name, "timestamp": AT, "model": "gemini-2.5-flash", "usage": usage}
        result = one(client, tenant, event)
        assert (result["pricing"], result["cost_usd"]) == ("priced", "0.00584"), name
    stored = stored_events(database)
    assert stored["wire"].provider == "google"
    assert (stored["wire"].input_tokens, stored["wire"].output_tokens) == (2000, 2000)
    assert stored["wire"].cache_read_input_tokens == 8000


def test_provider_is_inferred_from_the_model_not_defaulted(
    client: TestClient, database: Database, tenant: Tenant
) -> None:
    # flat fields keep the Anthropic meaning: 1000 uncached input, 100 output
    # gpt-4o: 1000*2.5 + 100*10 = 3500 micro-USD
    event = {"id": "bare", "timestamp": AT, "model": "gpt-4o", "input_tokens": 1000}
    event["output_tokens"] = 100
    result = one(client, tenant, event)
    assert (result["pricing"], result["cost_usd"]) == ("priced", "0.0035")
    unknown = {"id": "mystery", "timestamp": AT, "model": "house-model-7", "input_tokens": 5}
    assert one(client, tenant, unknown)["pricing"] == "unpriced"
    stored = stored_events(database)
    assert stored["bare"].provider == "openai"
    assert stored["mystery"].provider == "unknown"


def test_a_reused_id_with_another_usage_object_is_a_conflict(
    client: TestClient, database: Database, tenant: Tenant
) -> None:
    event = {"id": "same", "timestamp": AT, "model": "gpt-4o", "usage": chat_usage(100, 10)}
    assert one(client, tenant, event)["status"] == "created"
    assert one(client, tenant, json.loads(json.dumps(event)))["status"] == "duplicate"
    changed = {**event, "usage": chat_usage(100, 10, cached=50)}
    response = post(client, tenant.headers, changed)
    assert response.status_code == 409, response.text
    assert len(stored_events(database)) == 1


def test_a_reservation_for_an_openai_model_without_provider_is_priced(
    client: TestClient, tenant: Tenant
) -> None:
    # gpt-4o: 1000*2.5 + 100*10 = 3500 micro-USD
    body = {"model": "gpt-4o", "max_input_tokens": 1000, "max_output_tokens": 100}
    response = client.post("/api/v1/reservations", json=body, headers=tenant.headers)
    assert response.status_code == 201, response.text
    assert response.json()["amount_usd"] == "0.0035"


def test_a_flat_event_of_an_openai_model_with_a_tier_is_reread_with_anthropic_meaning(
    client: TestClient, database: Database, tenant: Tenant, admin_headers: dict[str, str]
) -> None:
    # Flat counts keep Anthropic's meaning whatever the model: 976 uncached, 1024 cached.
    # gpt-4o batch: input 1.25, output 5; no batch rate for cached input in the data, so
    # 1.25: 976*1.25 + 1024*1.25 + 300*5 = 1220 + 1280 + 1500 = 4000 micro-USD
    event = {
        "id": "flat-batch",
        "timestamp": AT_BATCH,
        "model": "gpt-4o",
        "input_tokens": 976,
        "output_tokens": 300,
        "cache_read_input_tokens": 1024,
        "service_tier": "batch",
    }
    assert one(client, tenant, event)["cost_usd"] == "0.004"
    stored = stored_events(database)["flat-batch"]
    assert stored.usage_object is not None
    again = reread(stored.provider, stored.usage_object)
    assert (again.tokens.input_tokens, again.tokens.cache_read_input_tokens) == (976, 1024)
    assert again.context == {"processing": "batch"}
    # and so does a repricing of it: the same price, nothing changes
    selection = {"model": "gpt-4o", "from": "2026-11-01T00:00:00Z", "to": "2026-12-01T00:00:00Z"}
    done = client.post("/api/pricing/reprice", json=selection, headers=admin_headers)
    assert done.status_code == 200, done.text
    assert (done.json()["examined"], done.json()["changed"]) == (1, 0)
    assert stored_events(database)["flat-batch"].cost_nano == 4_000_000
