"""OpenAI Chat Completions and Responses through the gateway, with the real openai SDK
(sync, async, streaming) against the stand-in upstream."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import openai
import pytest

from tests.gateway.conftest import opened
from tests.gateway.ledger import holds, stored_events
from tests.gateway.upstream import RETRY_AFTER, UPSTREAM_OPENAI_KEY

# gpt-4o, USD per million tokens: input 2.50, cached input 1.25, output 10.
# Chat: 3000 prompt tokens of which 1000 cached, 400 completion tokens:
# 2000 * 2.50 + 1000 * 1.25 + 400 * 10 = 10,250 micro-USD.
CHAT_USAGE = {
    "prompt_tokens": 3000,
    "completion_tokens": 400,
    "total_tokens": 3400,
    "prompt_tokens_details": {"cached_tokens": 1000, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
}
CHAT_COST_NANO = 10_250_000
# Responses: 5000 input tokens of which 4000 cached, 300 output tokens (100 reasoning):
# 1000 * 2.50 + 4000 * 1.25 + 300 * 10 = 10,500 micro-USD.
RESPONSES_USAGE = {
    "input_tokens": 5000,
    "input_tokens_details": {"cached_tokens": 4000},
    "output_tokens": 300,
    "output_tokens_details": {"reasoning_tokens": 100},
    "total_tokens": 5300,
}
RESPONSES_COST_NANO = 10_500_000
MESSAGES = [{"role": "user", "content": "Say hello"}]


def sdk(gateway: str, key: str) -> openai.OpenAI:
    return opened(
        openai.OpenAI(base_url=f"{gateway}/gateway/openai/v1", api_key=key, max_retries=0)
    )


def usage_header(usage: dict[str, object]) -> dict[str, str]:
    return {"x-fake-usage": json.dumps(usage)}


def test_a_chat_completion_is_one_exact_event(gateway, make_tenant, database, fake):
    tenant = make_tenant(license={})
    completion = sdk(gateway, tenant.key).chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,  # type: ignore[arg-type]
        max_completion_tokens=500,
        extra_headers={**usage_header(CHAT_USAGE), "tokenledger-refresh-id": "run-1"},
    )
    assert completion.choices[0].message.content == "Hello, world!"
    (event,) = stored_events(database, tenant.org_id)
    assert event["id"] == completion.id
    assert event["id"].startswith("chatcmpl-")
    assert (event["provider"], event["cost_nano"], event["pricing"]) == (
        "openai",
        CHAT_COST_NANO,
        "priced",
    )
    # Anthropic's meaning in the ledger: input without the cache reads.
    assert (event["input_tokens"], event["cache_read_input_tokens"]) == (2000, 1000)
    assert event["refresh_id"] == "run-1"
    (hold,) = holds(database, tenant.org_id)
    assert (hold.status, hold.settled_cost_nano) == ("settled", CHAT_COST_NANO)
    sent = fake.received[-1]["headers"]
    assert sent["authorization"] == f"Bearer {UPSTREAM_OPENAI_KEY}"
    assert tenant.key not in json.dumps(sent)


def test_a_chat_stream_gets_usage_without_the_client_asking(gateway, make_tenant, database, fake):
    """The gateway asks for include_usage and keeps the extra usage chunk from the client."""
    tenant = make_tenant(license={})
    stream = sdk(gateway, tenant.key).chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,  # type: ignore[arg-type]
        max_completion_tokens=500,
        stream=True,
        extra_headers=usage_header(CHAT_USAGE),
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello, world!"
    assert all(chunk.choices for chunk in chunks)  # no usage chunk reached the client
    assert fake.received[-1]["body"]["stream_options"] == {"include_usage": True}
    (event,) = stored_events(database, tenant.org_id)
    assert event["id"] == chunks[0].id
    assert event["cost_nano"] == CHAT_COST_NANO


def test_a_chat_stream_that_asked_for_usage_keeps_it(gateway, make_tenant, database):
    tenant = make_tenant(license={})
    stream = sdk(gateway, tenant.key).chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,  # type: ignore[arg-type]
        max_completion_tokens=500,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=usage_header(CHAT_USAGE),
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 3000
    (event,) = stored_events(database, tenant.org_id)
    assert event["cost_nano"] == CHAT_COST_NANO


def test_a_response_plain_and_streamed(gateway, make_tenant, database):
    tenant = make_tenant(license={})
    client = sdk(gateway, tenant.key)
    plain = client.responses.create(
        model="gpt-4o",
        input="Say hello",
        max_output_tokens=500,
        extra_headers=usage_header(RESPONSES_USAGE),
    )
    assert plain.output_text == "Hello, world!"
    with client.responses.stream(
        model="gpt-4o",
        input="Say hello",
        max_output_tokens=500,
        extra_headers=usage_header(RESPONSES_USAGE),
    ) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "Hello, world!"
    events = stored_events(database, tenant.org_id)
    assert [event["id"] for event in events] == [plain.id, final.id]
    assert [event["cost_nano"] for event in events] == [RESPONSES_COST_NANO] * 2
    assert [hold.status for hold in holds(database, tenant.org_id)] == ["settled"] * 2


def test_the_async_client(gateway, make_tenant, database):
    tenant = make_tenant(license={})

    async def calls() -> list[str]:
        client = openai.AsyncOpenAI(
            base_url=f"{gateway}/gateway/openai/v1", api_key=tenant.key, max_retries=0
        )
        completion = await client.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_completion_tokens=500,
            extra_headers=usage_header(CHAT_USAGE),
        )
        stream = await client.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_completion_tokens=500,
            stream=True,
            extra_headers=usage_header(CHAT_USAGE),
        )
        ids = [completion.id]
        async for chunk in stream:
            if chunk.id not in ids:
                ids.append(chunk.id)
        await client.close()
        return ids

    ids = asyncio.run(calls())
    events = stored_events(database, tenant.org_id)
    assert sorted(event["id"] for event in events) == sorted(ids)
    assert [event["cost_nano"] for event in events] == [CHAT_COST_NANO] * 2


@pytest.mark.parametrize("status", [400, 401, 429, 500, 503])
def test_provider_errors_pass_through_uncharged(gateway, make_tenant, database, status):
    tenant = make_tenant(license={})
    with pytest.raises(openai.APIStatusError) as raised:
        sdk(gateway, tenant.key).chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_completion_tokens=50,
            extra_headers={"x-fake-scenario": f"error-{status}"},
        )
    assert raised.value.status_code == status
    assert raised.value.response.headers["retry-after"] == RETRY_AFTER
    assert stored_events(database, tenant.org_id) == []
    assert [hold.status for hold in holds(database, tenant.org_id)] == ["released"]


def test_a_hard_budget_refuses_with_402_insufficient_quota(gateway, make_tenant, database, fake):
    tenant = make_tenant(license={"token_budget_usd": Decimal("0.001"), "enforcement": "hard"})
    with pytest.raises(openai.APIStatusError) as raised:
        sdk(gateway, tenant.key).chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_completion_tokens=1000,  # 0.01 USD of output alone
        )
    assert raised.value.status_code == 402
    error = raised.value.body
    assert error["type"] == "insufficient_quota"  # type: ignore[index]
    assert error["code"] == "budget_exhausted"  # type: ignore[index]
    assert fake.received == []


def test_without_a_provider_key_the_gateway_answers_503(
    database_url, upstream_url, clock, make_tenant, fake
):
    from tests.conftest import serving
    from tests.gateway.conftest import gateway_settings
    from tokenledger.app import create_app

    tenant = make_tenant(license={})
    settings = gateway_settings(database_url, upstream_url, openai_api_key="")
    with (
        serving(create_app(settings, clock=clock)) as url,
        pytest.raises(openai.APIStatusError) as raised,
    ):
        sdk(url, tenant.key).chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,  # type: ignore[arg-type]
        )
    assert raised.value.status_code == 503
    assert raised.value.body["type"] == "server_error"  # type: ignore[index]
    assert fake.received == []
