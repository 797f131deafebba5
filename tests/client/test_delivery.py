"""Delivery decisions for answers a healthy local server does not give: 413, 429, 403, junk."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tokenledger.client._delivery import (
    FlushOutcome,
    Reply,
    Request,
    RetryPolicy,
    Sleep,
    Unsettled,
    flush_steps,
    parse_retry_after,
)
from tokenledger.client._events import Event, build_event, timestamp_text, usage_fields

POLICY = RetryPolicy(max_retries=2, backoff=0.1, max_backoff=1.0)
Answer = Callable[[list[dict[str, Any]]], Reply]


def events(count: int) -> list[Event]:
    return [Event(f"e{i}", json.dumps({"id": f"e{i}"})) for i in range(count)]


def accepted(sent: list[dict[str, Any]]) -> Reply:
    results = [{"id": event["id"], "status": "created"} for event in sent]
    return Reply(200, json.dumps({"results": results, "budgets": []}).encode())


def error(status: int, code: str, message: str, details: Any = None) -> Answer:
    body = json.dumps({"error": {"code": code, "message": message, "details": details}})
    return lambda _sent: Reply(status, body.encode())


def drive(
    batches: list[list[Event]], answers: list[Answer]
) -> tuple[FlushOutcome, list[list[str]], list[float]]:
    """Run flush_steps against scripted answers; what it sent, and how long it slept."""
    steps = flush_steps(batches, POLICY)
    sent: list[list[str]] = []
    slept: list[float] = []
    try:
        action = next(steps)
        while True:
            if isinstance(action, Sleep):
                slept.append(action.seconds)
                action = steps.send(True)
                continue
            assert isinstance(action, Request)
            assert action.content is not None
            body = json.loads(action.content)["events"]
            sent.append([event["id"] for event in body])
            action = steps.send(answers.pop(0)(body))
    except StopIteration as done:
        assert answers == [], "not every scripted answer was asked for"
        return done.value, sent, slept


def test_too_large_a_batch_is_split_in_halves() -> None:
    too_large = error(413, "body_too_large", "request body over 5242880 bytes")
    outcome, sent, _ = drive([events(4)], [too_large, accepted, accepted])
    assert sent == [["e0", "e1", "e2", "e3"], ["e0", "e1"], ["e2", "e3"]]
    assert (outcome.created, len(outcome.acknowledged), outcome.rejected) == (4, 4, [])


def test_an_event_named_only_in_the_message_is_refused_and_the_rest_resent() -> None:
    mismatch = error(403, "organization_mismatch", "events[1]: this key may only write ...")
    outcome, sent, slept = drive([events(3)], [mismatch, accepted])
    assert sent == [["e0", "e1", "e2"], ["e0", "e2"]]
    assert [(r.event.id, r.status) for r in outcome.rejected] == [("e1", 403)]
    assert outcome.created == 2
    assert slept == []  # a refusal is final: no backoff, no retry of the same bytes


def test_a_refusal_naming_no_event_refuses_the_whole_batch() -> None:
    outcome, _, _ = drive([events(2), events(1)], [error(401, "not_authenticated", "x")] * 2)
    assert [r.event.id for r in outcome.rejected] == ["e0", "e1", "e0"]
    assert outcome.unavailable is None


def test_429_waits_at_least_retry_after_then_succeeds() -> None:
    busy: Answer = lambda _sent: Reply(429, b"{}", retry_after=0.7)  # noqa: E731
    outcome, sent, slept = drive([events(2)], [busy, accepted])
    assert len(sent) == 2
    assert 0.7 <= slept[0] <= POLICY.max_backoff
    assert outcome.created == 2


def test_retries_run_out_and_the_events_stay_pending() -> None:
    down: Answer = lambda _sent: Reply(None, failure="ConnectError: refused")  # noqa: E731
    outcome, sent, slept = drive([events(2), events(2)], [down, down, down])
    assert len(sent) == 3  # the first batch, twice retried; the second is not tried
    assert len(slept) == 2
    # Backoff 0.1 s, doubled each retry, jittered down to no less than half:
    # the first wait in [0.05, 0.1], the second in [0.1, 0.2]. Jitter is random: many runs.
    assert 0.05 <= slept[0] <= 0.1, slept
    assert 0.1 <= slept[1] <= 0.2, slept
    for _ in range(200):
        _, _, again = drive([events(1)], [down, down, down])
        assert 0.05 <= again[0] <= 0.1, again
        assert 0.1 <= again[1] <= 0.2, again
    assert outcome.unavailable == "ConnectError: refused"
    assert (outcome.acknowledged, outcome.rejected) == ([], [])


def test_a_2xx_that_is_not_an_ingestion_answer_settles_nothing() -> None:
    portal: Answer = lambda _sent: Reply(200, b"<html>captive portal</html>")  # noqa: E731
    outcome, _, _ = drive([events(1)], [portal])
    assert outcome.acknowledged == []
    assert outcome.unavailable is not None


def test_retry_after_parsing() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2026 07:28:00 GMT") is None
    assert parse_retry_after(None) is None


def test_usage_fields_from_sparse_and_inconsistent_usage() -> None:
    assert usage_fields(SimpleNamespace(input_tokens=None, output_tokens=3)) == {
        "input_tokens": 0,
        "output_tokens": 3,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    # A split that does not add up would make the server refuse a real call.
    odd = {
        "cache_creation_input_tokens": 50,
        "cache_creation": {"ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 10},
    }
    assert "cache_creation" not in usage_fields(odd)
    assert usage_fields(odd)["cache_creation_input_tokens"] == 50
    with pytest.raises(TypeError):
        usage_fields({"input_tokens": 1.5})
    with pytest.raises(ValueError, match="negative"):
        usage_fields({"input_tokens": -1})
    with pytest.raises(TypeError):
        usage_fields(None)


def test_timestamps_are_rewritten_as_rfc_3339_and_must_have_an_offset() -> None:
    assert timestamp_text("2026-01-05T10:00Z") == "2026-01-05T10:00:00+00:00"
    assert timestamp_text(None).endswith("+00:00")
    with pytest.raises(ValueError, match="timezone"):
        timestamp_text("2026-01-05T10:00:00")


def test_an_event_is_serialized_once_with_id_and_time() -> None:
    def make(**overrides: Any) -> Event:
        values: dict[str, Any] = {
            "refresh_id": None,
            "provider": "anthropic",
            "timestamp": None,
            "event_id": None,
            "cost_usd": None,
            "reservation_id": None,
            "metadata": None,
            "api_calls": 1,
        }
        values.update(overrides)
        return build_event("acme", "claude-haiku-4-5", {"input_tokens": 1}, **values)

    random_ids = {make().id for _ in range(3)}
    assert len(random_ids) == 3
    by_message = {make(metadata={"message_id": "msg_1"}).id for _ in range(3)}
    assert len(by_message) == 1
    priced = json.loads(make(cost_usd=0.1, event_id="x").line)
    assert (priced["id"], priced["cost_usd"]) == ("x", "0.1")
    with pytest.raises(ValueError, match="event_id"):
        make(event_id="x" * 129)


def test_a_torn_spool_line_is_dead_lettered_and_the_next_append_stays_whole(
    tmp_path: Path,
) -> None:
    spool = tmp_path / "usage.spool"
    spool.write_text('{"id":"kept"}\n{"id":"torn","model":"claude')
    ledger = Unsettled(spool, None)

    assert ledger.replay() == 1
    ledger.add(Event("new", '{"id":"new"}'))

    assert spool.read_text() == '{"id":"kept"}\n{"id":"new"}\n'
    [dead] = (tmp_path / "usage.spool.rejected.jsonl").read_text().splitlines()
    assert json.loads(dead)["error"]["code"] == "unreadable_spool_line"
    assert json.loads(dead)["event"] == '{"id":"torn","model":"claude'
