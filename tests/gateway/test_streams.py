"""Streams stream, and no call is lost: the first event reaches the client before the
upstream sends the last; a client that goes away, a stream that breaks off and a gateway
killed mid-call each leave an exact trace in the ledger."""

from __future__ import annotations

import json
import time

import anthropic
import httpx
import httpx2
import openai
import pytest

from tests.gateway.conftest import opened
from tests.gateway.ledger import holds, stored_events
from tests.gateway.test_anthropic import MESSAGES, USAGE, USAGE_COST_NANO, sdk
from tokenledger.gateway.metering import INCOMPLETE_UNIT


def wait_for_events(database, org_id, count=1, seconds=20.0):  # type: ignore[no-untyped-def]
    """The organization's events once `count` are stored (the gateway records a stream
    after its client has gone, on its own time)."""
    deadline = time.monotonic() + seconds
    while True:
        events = stored_events(database, org_id)
        if len(events) >= count or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


def test_the_first_event_arrives_before_the_upstream_sends_the_last(gateway, make_tenant, fake):
    """The upstream waits, after its first event, until the client has that event: a
    gateway that buffered the stream would never deliver it (the SDK times out)."""
    tenant = make_tenant(license={})
    client = opened(
        anthropic.Anthropic(
            base_url=f"{gateway}/gateway/anthropic", api_key=tenant.key, max_retries=0, timeout=10
        )
    )
    try:
        with client.messages.stream(
            model="claude-sonnet-4-6",
            max_tokens=100,
            messages=MESSAGES,
            extra_headers={"x-fake-scenario": "gate", "x-fake-usage": json.dumps(USAGE)},
        ) as stream:
            events = iter(stream)
            first = next(events)
            assert first.type == "message_start"
            assert fake.finished == []  # the upstream has not sent its last event
            fake.gate.set()
            rest = [event.type for event in events]
        assert rest[-1] == "message_stop"
    finally:
        fake.gate.set()


def test_a_client_that_leaves_after_the_first_event_is_recorded_in_full(
    gateway, make_tenant, database, fake
):
    tenant = make_tenant(license={})
    try:
        with sdk(gateway, tenant.key).messages.stream(
            model="claude-sonnet-4-6",
            max_tokens=1000,
            messages=MESSAGES,
            extra_headers={"x-fake-scenario": "gate", "x-fake-usage": json.dumps(USAGE)},
        ) as stream:
            first = next(iter(stream))
            assert first.type == "message_start"
            answer_id = first.message.id
        # The client has closed its connection; only now does the upstream go on.
        fake.gate.set()
        (event,) = wait_for_events(database, tenant.org_id)
    finally:
        fake.gate.set()
    assert fake.finished == [answer_id]
    assert event["id"] == answer_id
    assert (event["cost_nano"], event["pricing"]) == (USAGE_COST_NANO, "priced")
    assert event["output_tokens"] == 200  # the final message_delta's, not message_start's


def test_a_broken_anthropic_stream_is_recorded_as_reported_for_review(
    gateway, make_tenant, database, admin_headers
):
    """Broken after message_start: its usage (output 1 token so far) is recorded, partially
    priced and named for review: 1000 * 3 + 1 * 15 + 1500 * 3.75 + 500 * 6 + 10000 * 0.30
    = 14,640 micro-USD."""
    tenant = make_tenant(license={})
    with (
        pytest.raises((anthropic.APIError, httpx2.HTTPError)),
        sdk(gateway, tenant.key).messages.stream(
            model="claude-sonnet-4-6",
            max_tokens=1000,
            messages=MESSAGES,
            extra_headers={"x-fake-scenario": "break", "x-fake-usage": json.dumps(USAGE)},
        ) as stream,
    ):
        for _event in stream:
            pass
    (event,) = wait_for_events(database, tenant.org_id)
    assert event["id"].startswith("msg_")
    assert event["output_tokens"] == 1
    assert event["cost_nano"] == 14_640_000
    assert (event["pricing"], event["unpriced_units"]) == ("partially_priced", INCOMPLETE_UNIT)
    (hold,) = holds(database, tenant.org_id)
    assert (hold.status, hold.settled_cost_nano) == ("settled", 14_640_000)
    with httpx.Client(base_url=gateway) as http:
        listed = http.get("/api/pricing/unpriced", headers=admin_headers).json()
    assert {"model": "claude-sonnet-4-6", "units": [INCOMPLETE_UNIT]} in [
        {"model": entry["model"], "units": entry["units"]} for entry in listed
    ]


def test_a_broken_chat_stream_without_usage_is_recorded_at_its_hold(gateway, make_tenant, database):
    """OpenAI reports usage only at the end: broken before it, the call is recorded at its
    hold (an upper bound, never 0) and named for review."""
    tenant = make_tenant(license={})
    client = opened(
        openai.OpenAI(base_url=f"{gateway}/gateway/openai/v1", api_key=tenant.key, max_retries=0)
    )
    with pytest.raises((openai.APIError, httpx2.HTTPError)):  # noqa: PT012
        stream = client.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_completion_tokens=500,
            stream=True,
            extra_headers={"x-fake-scenario": "break"},
        )
        for _chunk in stream:
            pass
    (event,) = wait_for_events(database, tenant.org_id)
    (hold,) = holds(database, tenant.org_id)
    assert event["id"].startswith("chatcmpl-")
    assert event["cost_nano"] == hold.amount_nano > 0
    assert (event["pricing"], event["unpriced_units"]) == ("partially_priced", INCOMPLETE_UNIT)
