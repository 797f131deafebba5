"""The Python client given what the providers' SDKs return, priced by hand, on both databases.

The client talks to the real app (its HTTP client is the app's TestClient, an httpx.Client),
so everything from record() to the stored row is the real code. Rates (USD per million
tokens, so X micro-USD a token): claude-sonnet-4-5 3 in, 15 out, 3.75 5-minute write,
6 one-hour write, 0.30 read, $10 per 1000 web searches; gpt-4o 2.50 in, 1.25 cached,
10 out; gpt-4.1 2 in, 0.50 cached, 8 out; o3 2 in, 0.50 cached, 8 out (reasoning is output);
gemini-2.5-flash 0.30 in, 0.03 cached, 2.50 out (thinking is output).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic.types as anthropic_types
import pytest
from anthropic.lib.streaming import MessageStopEvent
from fastapi.testclient import TestClient
from google.genai import types as gemini_types
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.completion_usage import (
    CompletionTokensDetails,
    CompletionUsage,
    PromptTokensDetails,
)
from openai.types.responses import Response, ResponseCompletedEvent, ResponseUsage
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

from tests.conftest import Tenant
from tests.ledger.conftest import AT, LICENSE, stored_events
from tokenledger.client import TokenLedgerClient
from tokenledger.client._events import build_event
from tokenledger.db import Database


class InProcessClient(TokenLedgerClient):
    """The real client, its requests served by the app in this process."""

    http: TestClient

    def _connect(self, *, base_url: str, timeout: float, headers: dict[str, str]) -> Any:
        self.http.headers.update(headers)
        return self.http


@pytest.fixture
def tenant(make_tenant: Callable[..., Tenant]) -> Tenant:
    return make_tenant(LICENSE)


def record_all(client: TestClient, tenant: Tenant, calls: dict[str, tuple[str, object]]) -> None:
    InProcessClient.http = client
    ledger = InProcessClient("http://testserver", tenant.key, flush_interval=None)
    for event_id, (model, usage) in calls.items():
        ledger.record(tenant.slug, model, usage, event_id=event_id, timestamp=AT)
    report = ledger.close()
    assert (report.created, report.rejected, report.pending) == (len(calls), 0, 0), report


def claude_message(**usage: Any) -> anthropic_types.Message:
    return anthropic_types.Message(
        id="msg_01",
        content=[],
        model="claude-sonnet-4-5-20250929",
        role="assistant",
        type="message",
        stop_reason="end_turn",
        usage=anthropic_types.Usage(**usage),
    )


def chat_completion(prompt: int, completion: int, cached: int, reasoning: int = 0) -> Any:
    return ChatCompletion(
        id="chatcmpl-1",
        choices=[],
        created=1_781_000_000,
        model="gpt-4o-2024-08-06",
        object="chat.completion",
        service_tier="default",
        usage=CompletionUsage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
            completion_tokens_details=CompletionTokensDetails(reasoning_tokens=reasoning),
        ),
    )


def response_usage(input_tokens: int, output: int, cached: int, reasoning: int = 0) -> Any:
    return ResponseUsage(
        input_tokens=input_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=cached, cache_write_tokens=0),
        output_tokens=output,
        output_tokens_details=OutputTokensDetails(reasoning_tokens=reasoning),
        total_tokens=input_tokens + output,
    )


def response(usage: ResponseUsage) -> Response:
    return Response(
        id="resp_1",
        created_at=1_781_000_000,
        model="gpt-4.1-2025-04-14",
        object="response",
        output=[],
        parallel_tool_calls=True,
        tool_choice="auto",
        tools=[],
        usage=usage,
    )


def gemini_response() -> gemini_types.GenerateContentResponse:
    return gemini_types.GenerateContentResponse(
        model_version="gemini-2.5-flash",
        usage_metadata=gemini_types.GenerateContentResponseUsageMetadata(
            prompt_token_count=10_000,
            cached_content_token_count=8000,
            candidates_token_count=500,
            thoughts_token_count=1500,
            total_token_count=12_000,
        ),
    )


CLAUDE = {
    "input_tokens": 1000,
    "output_tokens": 500,
    "cache_creation_input_tokens": 2000,
    "cache_creation": anthropic_types.CacheCreation(
        ephemeral_5m_input_tokens=1500, ephemeral_1h_input_tokens=500
    ),
    "cache_read_input_tokens": 10_000,
    "server_tool_use": anthropic_types.ServerToolUsage(web_search_requests=2, web_fetch_requests=0),
    "service_tier": "standard",
}
# 1000*3 + 500*15 + 1500*3.75 + 500*6 + 10000*0.3 + 2 searches * 10000
# = 3000 + 7500 + 5625 + 3000 + 3000 + 20000 = 42125 micro-USD
CLAUDE_NANO = 42_125_000


def test_what_the_sdks_return_is_priced_through_the_client(
    client: TestClient, database: Database, tenant: Tenant
) -> None:
    message = claude_message(**CLAUDE)
    stop = MessageStopEvent(type="message_stop", message=message)
    completion = chat_completion(2000, 300, cached=1024)
    chunk = ChatCompletionChunk(
        id="chatcmpl-1",
        choices=[],
        created=1_781_000_000,
        model="gpt-4o",
        object="chat.completion.chunk",
        usage=completion.usage,
    )
    gpt41 = response(response_usage(5000, 200, cached=4096))
    completed = ResponseCompletedEvent(type="response.completed", response=gpt41, sequence_number=9)
    calls: dict[str, tuple[str, object]] = {
        "claude-usage": ("claude-sonnet-4-5", message.usage),
        "claude-message": ("claude-sonnet-4-5", message),
        "claude-stream-stop": ("claude-sonnet-4-5", stop),
        "claude-dict": ("claude-sonnet-4-5", message.usage.model_dump()),
        # gpt-4o: 976*2.5 + 1024*1.25 + 300*10 = 2440 + 1280 + 3000 = 6720 micro-USD
        "gpt-4o-usage": ("gpt-4o", completion.usage),
        "gpt-4o-completion": ("gpt-4o", completion),
        "gpt-4o-last-chunk": ("gpt-4o", chunk),
        "gpt-4o-dict": ("gpt-4o", completion.model_dump()),
        # gpt-4.1: 904*2 + 4096*0.5 + 200*8 = 1808 + 2048 + 1600 = 5456 micro-USD
        "gpt-4.1-usage": ("gpt-4.1", gpt41.usage),
        "gpt-4.1-response": ("gpt-4.1", gpt41),
        "gpt-4.1-completed-event": ("gpt-4.1", completed),
        # o3: 500*2 + 500*0.5 + 5000*8 = 1000 + 250 + 40000 = 41250 micro-USD
        "o3": ("o3", chat_completion(1000, 5000, cached=500, reasoning=4000).usage),
        # gemini: 2000*0.3 + 8000*0.03 + (500 + 1500)*2.5 = 600 + 240 + 5000 = 5840 micro-USD
        "gemini-response": ("gemini-2.5-flash", gemini_response()),
        "gemini-metadata": ("gemini-2.5-flash", gemini_response().usage_metadata),
    }
    record_all(client, tenant, calls)
    stored = stored_events(database, tenant.org_id)
    expected = {
        "claude": ("anthropic", CLAUDE_NANO),
        "gpt-4o": ("openai", 6_720_000),
        "gpt-4.1": ("openai", 5_456_000),
        "o3": ("openai", 41_250_000),
        "gemini": ("google", 5_840_000),
    }
    for event_id, event in stored.items():
        provider, nano = next(
            v for k, v in expected.items() if event_id.startswith(k + "-") or event_id == k
        )
        assert (event.provider, event.cost_nano, event.pricing) == (provider, nano, "priced"), (
            event_id
        )
    assert stored["claude-message"].cache_write_1h_tokens == 500
    assert stored["gpt-4o-completion"].cache_read_input_tokens == 1024
    assert stored["gpt-4o-completion"].input_tokens == 976


def test_a_batch_call_through_the_client(
    client: TestClient, database: Database, tenant: Tenant
) -> None:
    # Message Batches, priced from 2026-10-14 on: half of each token rate, searches at $10/1000
    # 1000*1.5 + 500*7.5 + 1500*1.875 + 500*3 + 10000*0.15 + 2*10000
    # = 1500 + 3750 + 2812.5 + 1500 + 1500 + 20000 = 31062.5 micro-USD
    InProcessClient.http = client
    ledger = InProcessClient("http://testserver", tenant.key, flush_interval=None)
    batch = claude_message(**{**CLAUDE, "service_tier": "batch"})
    ledger.record(tenant.slug, batch.model, batch, event_id="b", timestamp="2026-11-20T12:00:00Z")
    # OpenAI's Batch API says nothing in the usage: the caller names the tier.
    # gpt-4o batch: input 1.25, output 5; the data has no batch rate for cached input, so
    # it stays 1.25: 976*1.25 + 1024*1.25 + 300*5 = 1220 + 1280 + 1500 = 4000 micro-USD
    completion = chat_completion(2000, 300, cached=1024)
    ledger.record(
        tenant.slug,
        "gpt-4o",
        completion,
        event_id="o",
        timestamp="2026-11-20T12:00:00Z",
        service_tier="batch",
    )
    assert ledger.close().created == 2
    stored = stored_events(database, tenant.org_id)
    assert stored["b"].cost_nano == 31_062_500
    assert stored["o"].cost_nano == 4_000_000


@pytest.mark.parametrize(
    "unreadable",
    [
        object(),
        "1000 tokens",
        {"tokens": 5},
        ChatCompletion(id="c", choices=[], created=1, model="gpt-4o", object="chat.completion"),
        gemini_types.GenerateContentResponse(model_version="gemini-2.5-flash"),
        {"prompt_tokens": "12", "completion_tokens": 1},
    ],
)
def test_an_object_the_client_cannot_read_is_a_type_error_never_zero_tokens(
    unreadable: object,
) -> None:
    with pytest.raises(TypeError):
        build_event(
            "acme",
            "gpt-4o",
            unreadable,
            refresh_id=None,
            provider=None,
            timestamp=None,
            event_id=None,
            cost_usd=None,
            reservation_id=None,
            metadata=None,
            api_calls=1,
        )
