"""The Anthropic Messages API through the gateway, with the real anthropic SDK (sync,
async, streaming) against the stand-in upstream."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import anthropic
import httpx
import pytest

from tests.gateway.conftest import opened
from tests.gateway.ledger import holds, stored_events
from tests.gateway.upstream import RETRY_AFTER, UPSTREAM_ANTHROPIC_KEY

# Hand-worked price of USAGE on claude-sonnet-4-6 (USD per million tokens: input 3,
# output 15, 5-minute cache write 3.75, 1-hour cache write 6, cache read 0.30):
# 1000 * 3 + 200 * 15 + 1500 * 3.75 + 500 * 6 + 10000 * 0.30 = 17,625 micro-USD.
USAGE = {
    "input_tokens": 1000,
    "output_tokens": 200,
    "cache_creation_input_tokens": 2000,
    "cache_read_input_tokens": 10000,
    "cache_creation": {"ephemeral_5m_input_tokens": 1500, "ephemeral_1h_input_tokens": 500},
    "service_tier": "standard",
}
USAGE_COST_NANO = 17_625_000
MESSAGES = [{"role": "user", "content": "Say hello"}]


def sdk(gateway: str, key: str) -> anthropic.Anthropic:
    return opened(
        anthropic.Anthropic(base_url=f"{gateway}/gateway/anthropic", api_key=key, max_retries=0)
    )


def headers(**extra: str) -> dict[str, str]:
    return {"x-fake-usage": json.dumps(USAGE), **extra}


def test_a_message_is_one_exact_event_settling_its_hold(gateway, make_tenant, database, fake):
    tenant = make_tenant(license={})
    message = sdk(gateway, tenant.key).messages.create(
        model="claude-sonnet-4-6",
        max_tokens=1000,
        messages=MESSAGES,
        extra_headers=headers(
            **{"tokenledger-refresh-id": "run-7", "tokenledger-metadata": '{"job": "digest"}'}
        ),
    )
    assert message.content[0].text == "Hello, world!"
    (event,) = stored_events(database, tenant.org_id)
    assert event["id"] == message.id
    assert event["provider"] == "anthropic"
    assert (event["input_tokens"], event["output_tokens"]) == (1000, 200)
    assert event["cache_creation_input_tokens"] == 2000
    assert event["cache_write_1h_tokens"] == 500
    assert event["cache_read_input_tokens"] == 10000
    assert event["cost_nano"] == USAGE_COST_NANO
    assert event["pricing"] == "priced"
    assert event["refresh_id"] == "run-7"
    assert event["metadata"] == {"job": "digest"}
    (hold,) = holds(database, tenant.org_id)
    assert hold.id == event["reservation_id"]
    assert (hold.status, hold.settled_cost_nano, hold.kind) == (
        "settled",
        USAGE_COST_NANO,
        "gateway",
    )
    assert hold.amount_nano >= USAGE_COST_NANO
    # The provider got its own key, and nothing of tokenledger's.
    sent = fake.received[-1]["headers"]
    assert sent["x-api-key"] == UPSTREAM_ANTHROPIC_KEY
    assert sent["anthropic-version"]
    assert not [name for name in sent if name.startswith("tokenledger-")]
    assert tenant.key not in json.dumps(sent)


def test_the_hold_is_the_bound_of_input_and_max_tokens(gateway, make_tenant, database):
    """The body's bytes plus the request allowance at the 1-hour write rate (the dearest an
    input token can get), and max_tokens at the output rate."""
    tenant = make_tenant(license={})
    sdk(gateway, tenant.key).messages.create(
        model="claude-haiku-4-5", max_tokens=1000, messages=MESSAGES, extra_headers=headers()
    )
    (hold,) = holds(database, tenant.org_id)
    body = json.dumps(
        {"max_tokens": 1000, "messages": MESSAGES, "model": "claude-haiku-4-5"},
        separators=(",", ":"),
    )
    # claude-haiku-4-5: 1-hour cache write 2 USD/MTok, output 5 USD/MTok; bound =
    # (body bytes + 1000) * 2 + 1000 * 5, in micro-USD (no priority price on this model).
    expected = (Decimal(len(body) + 1000) * 2 + 1000 * 5) / 10**6
    assert Decimal(hold.amount_nano) / 10**9 == expected


def test_a_stream_is_forwarded_and_its_final_usage_recorded(gateway, make_tenant, database):
    tenant = make_tenant(license={})
    client = sdk(gateway, tenant.key)
    with client.messages.stream(
        model="claude-sonnet-4-6", max_tokens=1000, messages=MESSAGES, extra_headers=headers()
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello, world!"
    assert final.usage.output_tokens == 200
    (event,) = stored_events(database, tenant.org_id)
    assert event["id"] == final.id
    assert event["cost_nano"] == USAGE_COST_NANO
    (hold,) = holds(database, tenant.org_id)
    assert hold.status == "settled"


def test_the_async_client_plain_and_streamed(gateway, make_tenant, database):
    tenant = make_tenant(license={})

    async def calls() -> list[str]:
        client = anthropic.AsyncAnthropic(
            base_url=f"{gateway}/gateway/anthropic", api_key=tenant.key, max_retries=0
        )
        plain = await client.messages.create(
            model="claude-sonnet-4-6", max_tokens=100, messages=MESSAGES, extra_headers=headers()
        )
        stream = await client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=100,
            messages=MESSAGES,
            stream=True,
            extra_headers=headers(),
        )
        ids = [plain.id]
        async for event in stream:
            if event.type == "message_start":
                ids.append(event.message.id)
        await client.close()
        return ids

    ids = asyncio.run(calls())
    events = stored_events(database, tenant.org_id)
    assert sorted(event["id"] for event in events) == sorted(ids)
    assert [event["cost_nano"] for event in events] == [USAGE_COST_NANO] * 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 429, 500, 529])
def test_provider_errors_pass_through_uncharged(gateway, make_tenant, database, status):
    tenant = make_tenant(license={})
    with pytest.raises(anthropic.APIStatusError) as raised:
        sdk(gateway, tenant.key).messages.create(
            model="claude-sonnet-4-6",
            max_tokens=100,
            messages=MESSAGES,
            extra_headers={"x-fake-scenario": f"error-{status}"},
        )
    assert raised.value.status_code == status
    assert raised.value.response.headers["retry-after"] == RETRY_AFTER
    assert raised.value.response.headers["x-ratelimit-limit-requests"] == "50"
    assert raised.value.body["error"]["message"] == f"fake {status}"  # type: ignore[index]
    assert stored_events(database, tenant.org_id) == []
    (hold,) = holds(database, tenant.org_id)
    assert hold.status == "released"


def test_count_tokens_is_passed_through_uncharged(gateway, make_tenant, database):
    tenant = make_tenant(license={})
    counted = sdk(gateway, tenant.key).messages.count_tokens(
        model="claude-sonnet-4-6", messages=MESSAGES
    )
    assert counted.input_tokens == 42
    assert stored_events(database, tenant.org_id) == []
    assert holds(database, tenant.org_id) == []


def test_a_hard_budget_refuses_with_402_billing_error(gateway, make_tenant, database, fake):
    # 0.01 USD left; 4096 output tokens at 15 USD/MTok alone would be 0.06 USD.
    tenant = make_tenant(license={"token_budget_usd": Decimal("0.01"), "enforcement": "hard"})
    with pytest.raises(anthropic.APIStatusError) as raised:
        sdk(gateway, tenant.key).messages.create(
            model="claude-sonnet-4-6", max_tokens=4096, messages=MESSAGES
        )
    assert raised.value.status_code == 402
    assert raised.value.body["type"] == "error"  # type: ignore[index]
    assert raised.value.body["error"]["type"] == "billing_error"  # type: ignore[index]
    assert fake.received == []
    assert holds(database, tenant.org_id) == []


def test_an_unknown_model_is_refused_under_hard_and_forwarded_under_soft(
    gateway, make_tenant, database, fake
):
    hard = make_tenant(license={"enforcement": "hard"})
    with pytest.raises(anthropic.APIStatusError) as raised:
        sdk(gateway, hard.key).messages.create(
            model="claude-from-the-future", max_tokens=10, messages=MESSAGES
        )
    assert raised.value.status_code == 402
    assert fake.received == []
    soft = make_tenant(license={})
    message = sdk(gateway, soft.key).messages.create(
        model="claude-from-the-future", max_tokens=10, messages=MESSAGES
    )
    (event,) = stored_events(database, soft.org_id)
    assert (event["id"], event["pricing"], event["cost_nano"]) == (message.id, "unpriced", None)


def test_bad_keys_are_refused_in_the_providers_shape(gateway, make_tenant):
    with pytest.raises(anthropic.AuthenticationError) as raised:
        sdk(gateway, "tl_not_a_key").messages.create(
            model="claude-sonnet-4-6", max_tokens=10, messages=MESSAGES
        )
    assert raised.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]


def test_a_slow_first_byte_is_waited_for(gateway, make_tenant, database):
    tenant = make_tenant(license={})
    message = sdk(gateway, tenant.key).messages.create(
        model="claude-sonnet-4-6",
        max_tokens=100,
        messages=MESSAGES,
        extra_headers=headers(**{"x-fake-scenario": "slow-300"}),
    )
    assert [event["id"] for event in stored_events(database, tenant.org_id)] == [message.id]


def test_metrics_count_calls_and_never_show_the_provider_key(gateway, make_tenant, caplog):
    tenant = make_tenant(license={})
    client = sdk(gateway, tenant.key)
    client.messages.create(
        model="claude-sonnet-4-6", max_tokens=10, messages=MESSAGES, extra_headers=headers()
    )
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=10,
            messages=MESSAGES,
            extra_headers={"x-fake-scenario": "error-429"},
        )
    with httpx.Client(base_url=gateway) as http:
        text = http.get("/metrics").text
    assert 'tokenledger_gateway_requests_total{provider="anthropic",status="200"} 1.0' in text
    assert 'tokenledger_gateway_requests_total{provider="anthropic",status="429"} 1.0' in text
    assert 'tokenledger_gateway_upstream_seconds_count{provider="anthropic"} 2.0' in text
    assert 'tokenledger_gateway_overhead_seconds_count{provider="anthropic"} 2.0' in text
    assert UPSTREAM_ANTHROPIC_KEY not in text
    assert UPSTREAM_ANTHROPIC_KEY not in caplog.text
