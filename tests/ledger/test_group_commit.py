"""Group commit: requests that arrive while the writer is busy are written together.

The app's writer is held (SQLite: the process's one writer; PostgreSQL: the
organizations' row locks every ingest group takes first) while requests arrive, so
that they queue and then form one group. Each request keeps its own answer: one refused
for its own reason fails alone and stores nothing, the others commit once, and nobody is
answered before the commit that stored their events.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from tests.conftest import Tenant, serving
from tests.ledger.conftest import LICENSE, monthly_rows, stored_events
from tests.ledger.conftest import usage_event as event
from tokenledger.app import create_app
from tokenledger.auth.models import ApiKey
from tokenledger.config import Settings
from tokenledger.db import Database
from tokenledger.ledger.reconcile import reconcile
from tokenledger.organizations.models import Organization

# claude-sonnet-4-5, 1000 input and 100 output tokens: $0.0045 (see usage_event)
EVENT_NANO = 4_500_000


@contextmanager
def writer_held(app: FastAPI, database: Database, org_ids: list[int]) -> Iterator[Any]:
    """Until the block ends, no ingest group of the app can write these organizations."""
    if database.dialect_name == "sqlite":
        with app.state.database.session(write=True) as session:
            yield session
    else:
        with database.session(write=True) as session:
            session.execute(
                select(Organization.id).where(Organization.id.in_(org_ids)).with_for_update()
            ).all()
            yield session


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def group_sizes(app: FastAPI) -> dict[float, float]:
    """Observations of the group-size histogram, by bucket (cumulative counts)."""
    buckets = {}
    for metric in app.state.metrics.registry.collect():
        if metric.name == "tokenledger_usage_group_requests":
            for sample in metric.samples:
                if sample.name.endswith("_bucket"):
                    buckets[float(sample.labels["le"])] = sample.value
    return buckets


class Sender:
    """Sends requests each from its own thread; their responses, by name."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.responses: dict[str, httpx.Response] = {}
        self.threads: list[threading.Thread] = []

    def send(self, name: str, headers: dict[str, str], *events: dict[str, Any]) -> None:
        def run() -> None:
            with httpx.Client(base_url=self.url, timeout=60) as http:
                self.responses[name] = http.post(
                    "/api/v1/usage", json={"events": list(events)}, headers=headers
                )

        thread = threading.Thread(target=run)
        thread.start()
        self.threads.append(thread)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in self.threads)


@pytest.mark.slow
def test_a_group_commits_together_and_a_refused_request_fails_alone(
    settings: Settings,
    database: Database,
    service_headers: dict[str, str],
    make_tenant: Callable[..., Tenant],
) -> None:
    one, two = make_tenant(LICENSE), make_tenant(LICENSE)
    app = create_app(settings)
    with serving(app) as url:
        first = httpx.post(
            f"{url}/api/v1/usage",
            json={"events": [event("taken", organization=one.slug)]},
            headers=service_headers,
        )
        assert first.status_code == 200, first.text
        writer = app.state.usage_writer
        sender = Sender(url)
        with writer_held(app, database, [one.org_id, two.org_id]):
            # The first request becomes a group of its own and waits for the writer ...
            sender.send("blocker", one.headers, event("blocker"))
            wait_for(lambda: group_sizes(app).get(1.0) == 2, "the blocker's group began")
            # ... while these queue behind it: five good ones, and one that reuses the id
            # "taken" for other content along with a new event of its own.
            for n in range(5):
                sender.send(
                    f"good{n}",
                    service_headers,
                    event(f"g{n}-a", organization=one.slug),
                    event(f"g{n}-b", organization=two.slug),
                    event("taken", organization=one.slug),  # the same content: a duplicate
                )
            sender.send(
                "bad",
                service_headers,
                event("bad-new", organization=two.slug),
                event("taken", organization=one.slug, input_tokens=999),
            )
            # Refused before it is queued: another organization's key (403).
            sender.send("mismatch", two.headers, event("x", organization=one.slug))
            wait_for(lambda: writer.queued() == 6, "six requests are queued")
            time.sleep(0.2)
            # Nobody is answered before the commit (but the 403, which stores nothing).
            assert set(sender.responses) <= {"mismatch"}
        sender.join()

    statuses = {name: response.status_code for name, response in sender.responses.items()}
    assert statuses == {
        "blocker": 200,
        **{f"good{n}": 200 for n in range(5)},
        "bad": 409,
        "mismatch": 403,
    }
    assert sender.responses["bad"].json()["error"]["code"] == "idempotency_conflict"
    for n in range(5):
        results = sender.responses[f"good{n}"].json()["results"]
        assert [(r["id"], r["status"], r["cost_usd"]) for r in results] == [
            (f"g{n}-a", "created", "0.0045"),
            (f"g{n}-b", "created", "0.0045"),
            ("taken", "duplicate", "0.0045"),
        ]
    # One group of 1 (the blocker), then one group of the six queued requests.
    sizes = group_sizes(app)
    assert (sizes[1.0], sizes[4.0], sizes[8.0]) == (2, 2, 3)

    # Stored exactly once each; nothing of the refused request.
    assert sorted(stored_events(database, one.org_id)) == sorted(
        ["taken", "blocker", *(f"g{n}-a" for n in range(5))]
    )
    assert sorted(stored_events(database, two.org_id)) == sorted(f"g{n}-b" for n in range(5))
    assert stored_events(database, one.org_id)["taken"].input_tokens == 1000
    # Rollups are the sums of the events, worked out by hand: 7 and 5 events of $0.0045.
    assert monthly_rows(database, one.org_id)["2026-06"]["cost_nano"] == 7 * EVENT_NANO
    assert monthly_rows(database, two.org_id)["2026-06"]["cost_nano"] == 5 * EVENT_NANO
    assert monthly_rows(database, two.org_id)["2026-06"]["event_count"] == 5
    with database.session(write=False) as session:
        assert reconcile(session, fix=False) == []


@pytest.mark.slow
def test_a_group_that_fails_as_a_whole_is_written_batch_by_batch(
    settings: Settings,
    database: Database,
    service_headers: dict[str, str],
    make_tenant: Callable[..., Tenant],
) -> None:
    """A failure no batch could be refused for beforehand (here: its organization deleted
    after the request was validated) fails that batch alone; the others still commit."""
    kept, doomed = make_tenant(LICENSE), make_tenant()
    app = create_app(settings)
    with serving(app) as url:
        writer = app.state.usage_writer
        sender = Sender(url)
        with writer_held(app, database, [kept.org_id, doomed.org_id]) as session:
            sender.send("blocker", kept.headers, event("blocker"))
            wait_for(lambda: group_sizes(app).get(1.0) == 1, "the blocker's group began")
            sender.send("kept", service_headers, event("k1", organization=kept.slug))
            sender.send("doomed", service_headers, event("d1", organization=doomed.slug))
            sender.send("kept2", service_headers, event("k2", organization=kept.slug))
            wait_for(lambda: writer.queued() == 3, "three requests are queued")
            # The organization goes (it has no history yet) before its events are written.
            keys = select(ApiKey).where(ApiKey.organization_id == doomed.org_id)
            for key in session.scalars(keys):
                session.delete(key)
            session.flush()
            session.delete(session.get(Organization, doomed.org_id))
        sender.join()
    statuses = {name: response.status_code for name, response in sender.responses.items()}
    assert statuses == {"blocker": 200, "kept": 200, "doomed": 500, "kept2": 200}
    assert sorted(stored_events(database, kept.org_id)) == ["blocker", "k1", "k2"]
    assert monthly_rows(database, kept.org_id)["2026-06"]["cost_nano"] == 3 * EVENT_NANO
    with database.session(write=False) as session:
        assert reconcile(session, fix=False) == []


@pytest.mark.slow
def test_an_export_in_a_group_loses_only_its_refused_span(
    settings: Settings,
    database: Database,
    make_tenant: Callable[..., Tenant],
) -> None:
    """A partial batch (an OTLP export) in a group: a span reusing a stored span id for other
    content is refused alone, in the same single pass; a span whose response id is stored is
    that call's duplicate; the export's other spans and the group's other requests commit."""
    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )

    from tests.ledger.test_otlp import GPT_4O, json_export, json_span

    def protobuf(*spans: dict[str, Any]) -> bytes:
        body = json_export(*spans)
        for span in body["resourceSpans"][0]["scopeSpans"][0]["spans"]:
            for name in ("traceId", "spanId"):
                span[name] = base64.b64encode(bytes.fromhex(span[name])).decode()
        return json_format.ParseDict(body, ExportTraceServiceRequest()).SerializeToString()

    one = make_tenant(LICENSE)
    otlp = {**one.headers, "Content-Type": "application/x-protobuf"}
    app = create_app(settings)
    with serving(app) as url:
        stored = httpx.post(
            f"{url}/api/v1/usage", json={"events": [event("taken")]}, headers=one.headers
        )
        assert stored.status_code == 200, stored.text
        traced = httpx.post(
            f"{url}/v1/traces",
            content=protobuf(json_span("00000000000000a1", **GPT_4O)),
            headers=otlp,
        )
        assert traced.status_code == 200, traced.text
        writer = app.state.usage_writer
        sender = Sender(url)
        exported: dict[str, httpx.Response] = {}

        def export() -> None:
            spans = (
                json_span("00000000000000a1", **{**GPT_4O, "gen_ai__usage__output_tokens": 1}),
                json_span("00000000000000a2", **GPT_4O),
                json_span("00000000000000a3", **GPT_4O, gen_ai__response__id="taken"),
            )
            exported["otlp"] = httpx.post(
                f"{url}/v1/traces", content=protobuf(*spans), headers=otlp, timeout=60
            )

        with writer_held(app, database, [one.org_id]):
            sender.send("blocker", one.headers, event("blocker"))
            wait_for(lambda: group_sizes(app).get(1.0) == 3, "the blocker's group began")
            thread = threading.Thread(target=export)
            thread.start()
            wait_for(lambda: writer.queued() == 1, "the export is queued")
            sender.send("good", one.headers, event("good"))
            sender.send("bad", one.headers, event("bad-new"), event("taken", input_tokens=9))
            wait_for(lambda: writer.queued() == 3, "three requests are queued")
        sender.join()
        thread.join(timeout=60)

    statuses = {name: response.status_code for name, response in sender.responses.items()}
    assert statuses == {"blocker": 200, "good": 200, "bad": 409}
    assert exported["otlp"].status_code == 200, exported["otlp"].text
    partial = ExportTraceServiceResponse.FromString(exported["otlp"].content).partial_success
    assert partial.rejected_spans == 1
    assert partial.error_message.startswith("span 00000000000000a1: id 'otel-"), partial
    # one group of the three queued requests
    sizes = group_sizes(app)
    assert (sizes[1.0], sizes[2.0], sizes[4.0]) == (3, 3, 4)
    trace = "otel-5b8efff798038103d269b633813fc60c"
    events = stored_events(database, one.org_id)
    assert sorted(events) == sorted(
        ["taken", "blocker", "good", f"{trace}-00000000000000a1", f"{trace}-00000000000000a2"]
    )
    assert events[f"{trace}-00000000000000a1"].output_tokens == 300  # as first stored
    assert events["taken"].model == "claude-sonnet-4-5"  # the stored call, untouched
    # 3 events of $0.0045 (usage_event) and 2 of $0.00672 (GPT_4O), by hand
    assert monthly_rows(database, one.org_id)["2026-06"]["cost_nano"] == (
        3 * EVENT_NANO + 2 * 6_720_000
    )
    with database.session(write=False) as session:
        assert reconcile(session, fix=False) == []
