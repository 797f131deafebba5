"""OpenTelemetry GenAI spans become usage events: POST /v1/traces, priced by hand.

The first tests run the real opentelemetry-sdk with its OTLP/HTTP exporter (protobuf,
gzip) against the app served by uvicorn on a loopback port, configured by the environment
variables the README documents. Rates (USD per million tokens, X micro-USD a token):
claude-sonnet-4-5 3 in, 15 out, 0.30 cache read, 3.75 cache write; gpt-4o 2.50 in, 1.25
cached, 10 out; gemini-2.5-flash 0.30 in, 0.03 cached, 2.50 out.
"""

from __future__ import annotations

import base64
import gzip
import json
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from google.protobuf import json_format
from google.rpc.status_pb2 import Status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import text

from tests.conftest import Tenant, serving
from tests.ledger.conftest import LICENSE, monthly_rows, snapshot, stored_events
from tokenledger.app import create_app
from tokenledger.config import Settings
from tokenledger.db import Database

# 2026-06-15T12:00:00Z in nanoseconds since the epoch
END_NS = int(datetime(2026, 6, 15, 12, 0, tzinfo=UTC).timestamp()) * 10**9


@pytest.fixture
def tenant(make_tenant: Callable[..., Tenant]) -> Tenant:
    return make_tenant(LICENSE)


@pytest.fixture
def served(settings: Settings) -> Iterator[str]:
    """The app under uvicorn on a free loopback port: its base URL."""
    with serving(create_app(settings)) as url:
        yield url


GENAI_SPANS: list[tuple[str, dict[str, Any]]] = [
    (
        "chat claude-sonnet-4-5",
        {
            "gen_ai.provider.name": "anthropic",
            "gen_ai.request.model": "claude-sonnet-4-5",
            "gen_ai.response.model": "claude-sonnet-4-5-20250929",
            # input includes the cache, as the conventions say: 1000 uncached
            "gen_ai.usage.input_tokens": 13_000,
            "gen_ai.usage.output_tokens": 500,
            "gen_ai.usage.cache_read.input_tokens": 10_000,
            "gen_ai.usage.cache_creation.input_tokens": 2000,
        },
    ),
    (
        "chat gpt-4o",
        {
            "gen_ai.system": "openai",  # the older attribute
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.usage.input_tokens": 2000,
            "gen_ai.usage.output_tokens": 300,
            "gen_ai.usage.cache_read_input_tokens": 1024,  # the older spelling
        },
    ),
    (
        "generate_content gemini-2.5-flash",
        {
            "gen_ai.provider.name": "gcp.gemini",
            "gen_ai.request.model": "gemini-2.5-flash",
            "gen_ai.usage.input_tokens": 10_000,
            "gen_ai.usage.output_tokens": 2000,
            "gen_ai.usage.cache_read.input_tokens": 8000,
        },
    ),
]
# claude: 1000*3 + 500*15 + 10000*0.3 + 2000*3.75 = 3000 + 7500 + 3000 + 7500 = 21000
# gpt-4o: 976*2.5 + 1024*1.25 + 300*10 = 2440 + 1280 + 3000 = 6720
# gemini: 2000*0.3 + 8000*0.03 + 2000*2.5 = 600 + 240 + 5000 = 5840  (micro-USD)
EXPECTED = {
    "claude-sonnet-4-5-20250929": ("anthropic", 1000, 21_000_000),
    "gpt-4o": ("openai", 976, 6_720_000),
    "gemini-2.5-flash": ("google", 2000, 5_840_000),
}


def export_spans(resource: dict[str, Any], times: int = 1) -> list[tuple[str, str]]:
    """Make the spans with the real SDK and send them with its OTLP/HTTP exporter.

    Returns their (trace id, span id) pairs; ``times`` sends the same spans again.
    """
    provider = TracerProvider(resource=Resource.create(resource))
    finished = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(finished))
    tracer = provider.get_tracer("tests")
    with tracer.start_as_current_span("refresh run"):  # not a GenAI span
        for name, attributes in GENAI_SPANS:
            span = tracer.start_span(name, attributes=attributes)
            span.end(end_time=END_NS)
    spans = finished.get_finished_spans()
    exporter = OTLPSpanExporter()  # configured by the OTEL_EXPORTER_OTLP_TRACES_* variables
    for _ in range(times):
        assert exporter.export(spans) == SpanExportResult.SUCCESS
    exporter.shutdown()
    provider.shutdown()
    return [
        (f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}")
        for span in spans
        if span.name != "refresh run"
    ]


def configure_exporter(monkeypatch: pytest.MonkeyPatch, base_url: str, key: str) -> None:
    """The set-up the README gives an instrumented application."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{base_url}/v1/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", f"Authorization=Bearer%20{key}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip")


def assert_stored(database: Database, tenant: Tenant, ids: list[tuple[str, str]]) -> None:
    stored = stored_events(database, tenant.org_id)
    assert set(stored) == {f"otel-{trace}-{span}" for trace, span in ids}
    for event in stored.values():
        provider, uncached, nano = EXPECTED[event.model]
        assert (event.provider, event.input_tokens, event.cost_nano) == (provider, uncached, nano)
        assert event.pricing == "priced"
        assert event.timestamp == datetime(2026, 6, 15, 12, 0, tzinfo=UTC)


def test_sdk_exporter_with_an_organization_key(
    served: str,
    database: Database,
    tenant: Tenant,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure_exporter(monkeypatch, served, tenant.key)
    # exported twice (an exporter's retry): the same events, stored once
    ids = export_spans({"service.name": "summarizer"}, times=2)
    assert_stored(database, tenant, ids)


def test_sdk_exporter_with_a_service_key_and_the_organization_resource_attribute(
    served: str,
    database: Database,
    tenant: Tenant,
    service_headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = service_headers["Authorization"].removeprefix("Bearer ")
    configure_exporter(monkeypatch, served, key)
    ids = export_spans({"service.name": "summarizer", "tokenledger.organization": tenant.slug})
    assert_stored(database, tenant, ids)


def json_export(*spans: dict[str, Any], resource: list[Any] | None = None) -> dict[str, Any]:
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": resource or []},
                "scopeSpans": [{"scope": {"name": "tests"}, "spans": list(spans)}],
            }
        ]
    }


def json_span(span_id: str, **attributes: Any) -> dict[str, Any]:
    values = []
    for name, value in attributes.items():
        kind = "intValue" if isinstance(value, int) else "stringValue"
        values.append({"key": name.replace("__", "."), "value": {kind: value}})
    return {
        "traceId": "5b8efff798038103d269b633813fc60c",
        "spanId": span_id,
        "name": "chat",
        "kind": 3,
        "startTimeUnixNano": str(END_NS - 10**9),
        "endTimeUnixNano": str(END_NS),
        "attributes": values,
    }


GPT_4O = {
    "gen_ai__request__model": "gpt-4o",
    "gen_ai__usage__input_tokens": 2000,
    "gen_ai__usage__output_tokens": 300,
    "gen_ai__usage__cache_read__input_tokens": 1024,
}


def test_json_export_with_partial_success(
    client: TestClient, database: Database, tenant: Tenant
) -> None:
    body = json_export(
        json_span("eee91bc0b4c2f1a1", **GPT_4O),
        json_span("eee91bc0b4c2f1a2", gen_ai__usage__input_tokens=5),  # no model: refused
        json_span("eee91bc0b4c2f1a3", http__method="GET"),  # not a GenAI span: ignored
        json_span(
            "eee91bc0b4c2f1a4", **GPT_4O, tokenledger__organization="someone-else"
        ),  # another organization than the key's: refused
    )
    # as a JavaScript exporter sends it: JSON, gzipped
    compressed = gzip.compress(json.dumps(body).encode())
    headers = {**tenant.headers, "Content-Type": "application/json", "Content-Encoding": "gzip"}
    response = client.post("/v1/traces", content=compressed, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    assert answer["partialSuccess"]["rejectedSpans"] == "2", answer
    assert "gen_ai.request.model" in answer["partialSuccess"]["errorMessage"]
    stored = stored_events(database, tenant.org_id)
    assert set(stored) == {"otel-5b8efff798038103d269b633813fc60c-eee91bc0b4c2f1a1"}
    assert stored["otel-5b8efff798038103d269b633813fc60c-eee91bc0b4c2f1a1"].cost_nano == 6_720_000
    # re-sent: stored once, nothing rejected but the same two
    again = client.post("/v1/traces", json=body, headers=tenant.headers).json()
    assert again["partialSuccess"]["rejectedSpans"] == "2"
    assert len(stored_events(database, tenant.org_id)) == 1


def test_protobuf_answer_and_compressed_bodies(
    client: TestClient, database: Database, tenant: Tenant
) -> None:
    body = json_export(json_span("aaa91bc0b4c2f1a1", **GPT_4O))
    body["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"] = "W47/95gDgQPSabYzgT/GDA=="
    body["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["spanId"] = "qqkbwLTC8aE="
    message = json_format.ParseDict(body, ExportTraceServiceRequest())
    raw = message.SerializeToString()
    headers = {**tenant.headers, "Content-Type": "application/x-protobuf"}
    for encoding, compressed in (("gzip", gzip.compress(raw)), ("deflate", zlib.compress(raw))):
        response = client.post(
            "/v1/traces", content=compressed, headers={**headers, "Content-Encoding": encoding}
        )
        assert response.status_code == 200, response.text
        answer = ExportTraceServiceResponse.FromString(response.content)
        assert not answer.HasField("partial_success")
    assert len(stored_events(database, tenant.org_id)) == 1


def test_refused_bodies(client: TestClient, database: Database, tenant: Tenant) -> None:
    before = snapshot(database)
    protobuf = {**tenant.headers, "Content-Type": "application/x-protobuf"}
    # 6 MiB of zeros compress to a few kilobytes: over the 5 MiB body limit once inflated
    bomb = gzip.compress(b"\0" * (6 * 1024 * 1024))
    response = client.post(
        "/v1/traces", content=bomb, headers={**protobuf, "Content-Encoding": "gzip"}
    )
    assert response.status_code == 413
    # OTLP/HTTP: a bad export is a 400 whose body is a google.rpc.Status, in its encoding
    response = client.post("/v1/traces", content=b"\xff\x00garbage", headers=protobuf)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/x-protobuf"
    status = Status.FromString(response.content)
    assert status.code == 3  # INVALID_ARGUMENT
    assert "not an OTLP trace export" in status.message
    plain = {**tenant.headers, "Content-Type": "text/plain"}
    assert client.post("/v1/traces", content=b"{}", headers=plain).status_code == 415
    assert client.post("/v1/traces", json=json_export()).status_code == 401
    # malformed or ambiguous JSON is refused as for every JSON body, compressed or not
    not_json = {**tenant.headers, "Content-Type": "application/json"}
    for bad in (b"[1, 2", b'{"resourceSpans": [], "resourceSpans": []}'):
        assert client.post("/v1/traces", content=bad, headers=not_json).status_code == 400
        gzipped = {**not_json, "Content-Encoding": "gzip"}
        response = client.post("/v1/traces", content=gzip.compress(bad), headers=gzipped)
        assert response.status_code == 400, response.text
    assert client.post("/v1/traces", content=b"[1, 2]", headers=not_json).status_code == 400
    assert (
        json.loads(client.post("/v1/traces", json=json_export(), headers=tenant.headers).text) == {}
    )
    assert snapshot(database) == before


SPAN = {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee91bc0b4c2f1a1"}


@pytest.mark.parametrize(
    "body",
    [
        {"resourceSpans": [1]},
        {"resourceSpans": [None]},
        {"resourceSpans": ["x"]},
        {"resourceSpans": {"scopeSpans": []}},
        {"resourceSpans": "spans"},
        {"resourceSpans": [{"scopeSpans": [1]}]},
        {"resourceSpans": [{"scopeSpans": {"spans": []}}]},
        {"resourceSpans": [{"scopeSpans": [{"spans": [1, 2]}]}]},
        {"resourceSpans": [{"scopeSpans": [{"spans": [[SPAN]]}]}]},
        {"resourceSpans": [{"scopeSpans": [{"spans": [{**SPAN, "spanId": "not hex"}]}]}]},
        {"resourceSpans": [{"scopeSpans": [{"spans": [{**SPAN, "spanId": 7}]}]}]},
        {"resourceSpans": [{"scopeSpans": [{"spans": [{**SPAN, "attributes": [1]}]}]}]},
        {"resourceSpans": [{"scopeSpans": [{"spans": [{**SPAN, "attributes": {"a": 1}}]}]}]},
        {"resourceSpans": [{"resource": [1], "scopeSpans": []}]},
        {"resourceSpans": [{"scopeSpans": [{"spans": [{**SPAN, "endTimeUnixNano": "x"}]}]}]},
    ],
)
def test_otlp_json_of_the_wrong_shape_is_a_400_in_otlp_form(
    client: TestClient, database: Database, tenant: Tenant, body: dict[str, Any]
) -> None:
    before = snapshot(database)
    response = client.post("/v1/traces", json=body, headers=tenant.headers)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    assert answer["code"] == 3, answer  # google.rpc.Status: INVALID_ARGUMENT
    assert answer["message"].startswith("not an OTLP trace export"), answer
    assert snapshot(database) == before


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3)
    ),
    max_leaves=8,
)
# Where a generated value goes in an otherwise valid export of one GenAI span.
PLACES = st.sampled_from(
    [
        ("resourceSpans",),
        ("resourceSpans", 0),
        ("resourceSpans", 0, "resource"),
        ("resourceSpans", 0, "scopeSpans"),
        ("resourceSpans", 0, "scopeSpans", 0),
        ("resourceSpans", 0, "scopeSpans", 0, "spans"),
        ("resourceSpans", 0, "scopeSpans", 0, "spans", 0),
        ("resourceSpans", 0, "scopeSpans", 0, "spans", 0, "traceId"),
        ("resourceSpans", 0, "scopeSpans", 0, "spans", 0, "endTimeUnixNano"),
        ("resourceSpans", 0, "scopeSpans", 0, "spans", 0, "attributes"),
        ("resourceSpans", 0, "scopeSpans", 0, "spans", 0, "attributes", 0),
        ("resourceSpans", 0, "scopeSpans", 0, "spans", 0, "attributes", 0, "value"),
        ("resourceSpans", 0, "scopeSpans", 0, "spans", 0, "status"),
    ]
)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(place=PLACES, value=JSON_VALUES)
def test_any_json_in_any_place_is_answered_never_a_500(
    client: TestClient, tenant: Tenant, place: tuple[Any, ...], value: Any
) -> None:
    body: Any = json_export(json_span("eee91bc0b4c2f1a1", **GPT_4O))
    target = body
    for step in place[:-1]:
        target = target[step]
    target[place[-1]] = value
    response = client.post("/v1/traces", json=body, headers=tenant.headers)
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert response.json()["code"] == 3


def gpt_export(span_ids: list[str], input_tokens: int = 2000) -> bytes:
    """A protobuf export of gpt-4o spans (the GPT_4O figures), one per span id (hex)."""
    body = json_export(
        *(
            json_span(span_id, **{**GPT_4O, "gen_ai__usage__input_tokens": input_tokens})
            for span_id in span_ids
        )
    )
    for span in body["resourceSpans"][0]["scopeSpans"][0]["spans"]:
        span["traceId"] = base64.b64encode(bytes.fromhex(span["traceId"])).decode()
        span["spanId"] = base64.b64encode(bytes.fromhex(span["spanId"])).decode()
    return json_format.ParseDict(body, ExportTraceServiceRequest()).SerializeToString()


def test_a_multi_member_gzip_body_is_read_whole(
    client: TestClient, database: Database, tenant: Tenant
) -> None:
    # Two protobuf exports of three spans each, one gzip member each: protobuf concatenation
    # merges their repeated fields, so the whole body is one export of six spans.
    first = gpt_export([f"aaa91bc0b4c2f1a{n}" for n in range(3)])
    second = gpt_export([f"bbb91bc0b4c2f1a{n}" for n in range(3)])
    headers = {**tenant.headers, "Content-Type": "application/x-protobuf"}
    body = gzip.compress(first) + gzip.compress(second)
    response = client.post(
        "/v1/traces", content=body, headers={**headers, "Content-Encoding": "gzip"}
    )
    assert response.status_code == 200, response.text
    assert not ExportTraceServiceResponse.FromString(response.content).HasField("partial_success")
    assert len(stored_events(database, tenant.org_id)) == 6
    # the bound holds over all members: 3 + 3 MiB of zeros inflate past the 5 MiB limit
    zeros = gzip.compress(b"\0" * (3 * 1024 * 1024))
    response = client.post(
        "/v1/traces", content=zeros + zeros, headers={**headers, "Content-Encoding": "gzip"}
    )
    assert response.status_code == 413, response.text
    # a member cut short, or garbage after one, is a bad body
    for bad in (gzip.compress(first) + gzip.compress(second)[:-4], gzip.compress(first) + b"x"):
        response = client.post(
            "/v1/traces", content=bad, headers={**headers, "Content-Encoding": "gzip"}
        )
        assert response.status_code == 400, response.text
    response = client.post(
        "/v1/traces",
        content=zlib.compress(first) + zlib.compress(second),
        headers={**headers, "Content-Encoding": "deflate"},
    )
    assert response.status_code == 400, response.text
    assert len(stored_events(database, tenant.org_id)) == 6


def post_json(client: TestClient, tenant: Tenant, *spans: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/traces", json=json_export(*spans), headers=tenant.headers)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


# One Anthropic call as the SDK reports it: 14,000 input tokens of which 10,000 cache reads
# and 3,000 cache writes (1,000 of 5 minutes, 2,000 of 1 hour), 500 output. claude-sonnet-4-6
# (USD per million tokens): 3 in, 15 out, 0.30 cache read, 3.75 5-minute write, 6 1-hour write.
CLAUDE = {
    "gen_ai__provider__name": "anthropic",
    "gen_ai__request__model": "claude-sonnet-4-6",
    "gen_ai__response__model": "claude-sonnet-4-6",
    "gen_ai__usage__input_tokens": 14_000,
    "gen_ai__usage__output_tokens": 500,
    "gen_ai__usage__cache_read__input_tokens": 10_000,
}
SPLIT = {
    "anthropic__usage__cache_creation__ephemeral_5m_input_tokens": 1000,
    "anthropic__usage__cache_creation__ephemeral_1h_input_tokens": 2000,
}
# 1000*3 + 500*15 + 10000*0.30 + 1000*3.75 + 2000*6 = 29,250 micro-USD
CLAUDE_SPLIT_NANO = 29_250_000
# every write priced as a 5-minute one: 1000*3 + 500*15 + 10000*0.30 + 3000*3.75 = 24,750
CLAUDE_5M_NANO = 24_750_000


def test_cache_writes_named_cache_write_are_priced_as_writes(
    client: TestClient, database: Database, tenant: Tenant
) -> None:
    # the Anthropic SDK's own tracing and opentelemetry-instrumentation-genai-anthropic
    span = json_span("ccc91bc0b4c2f1a1", **CLAUDE, gen_ai__usage__cache_write__input_tokens=3000)
    assert "partialSuccess" not in post_json(client, tenant, span)
    (event,) = stored_events(database, tenant.org_id).values()
    assert (event.input_tokens, event.cache_creation_input_tokens) == (1000, 3000)
    assert (event.cache_read_input_tokens, event.output_tokens) == (10_000, 500)
    assert event.cost_nano == CLAUDE_5M_NANO


def test_the_five_minute_and_one_hour_split_is_priced_with_its_lifetimes(
    client: TestClient, database: Database, tenant: Tenant
) -> None:
    sdk = json_span(
        "ddd91bc0b4c2f1a1", **CLAUDE, **SPLIT, gen_ai__usage__cache_write__input_tokens=3000
    )
    # logfire: the total under the older name, the split in the provider's usage object
    raw = {
        "cache_creation": {"ephemeral_1h_input_tokens": 2000, "ephemeral_5m_input_tokens": 1000},
        "cache_creation_input_tokens": 3000,
        "cache_read_input_tokens": 10000,
        "input_tokens": 1000,
        "output_tokens": 500,
    }
    logfire = json_span(
        "ddd91bc0b4c2f1a2",
        **CLAUDE,
        gen_ai__usage__cache_creation__input_tokens=3000,
        gen_ai__usage__raw=json.dumps(raw),
    )
    # only the 1-hour count: the rest of the writes are 5-minute ones
    hour_only = json_span(
        "ddd91bc0b4c2f1a3",
        **CLAUDE,
        gen_ai__usage__cache_write__input_tokens=3000,
        anthropic__usage__cache_creation__ephemeral_1h_input_tokens=2000,
    )
    assert "partialSuccess" not in post_json(client, tenant, sdk, logfire, hour_only)
    stored = stored_events(database, tenant.org_id)
    assert len(stored) == 3
    for event in stored.values():
        assert (event.cache_creation_input_tokens, event.cache_write_1h_tokens) == (3000, 2000)
        assert event.cost_nano == CLAUDE_SPLIT_NANO, event.external_id


def test_one_call_seen_by_two_instrumentations_is_counted_once(
    client: TestClient, database: Database, tenant: Tenant
) -> None:
    # OpenLLMetry's span (no split) and the SDK's own (with it): siblings, one response id
    openllmetry = json_span(
        "eee91bc0b4c2f1b1",
        **CLAUDE,
        gen_ai__response__id="msg_01XFDUDYJgAACzvnptvVoYEL",
        gen_ai__usage__cache_creation__input_tokens=3000,
    )
    sdk = json_span(
        "eee91bc0b4c2f1b2",
        **CLAUDE,
        **SPLIT,
        gen_ai__response__id="msg_01XFDUDYJgAACzvnptvVoYEL",
        gen_ai__usage__cache_write__input_tokens=3000,
    )
    # OpenInference's span around the SDK's own (its parent, no response id): the same call
    openinference = json_span(
        "eee91bc0b4c2f1b3",
        llm__provider="anthropic",
        llm__model_name="claude-sonnet-4-6",
        llm__token_count__prompt=14_000,
        llm__token_count__completion=500,
        llm__token_count__prompt_details__cache_read=10_000,
        llm__token_count__prompt_details__cache_write=3000,
        openinference__span__kind="LLM",
    )
    child = json_span(
        "eee91bc0b4c2f1b4",
        **CLAUDE,
        **SPLIT,
        gen_ai__response__id="msg_02PwY3bq5vdNkX7bHwbUhUZ1",
        gen_ai__usage__cache_write__input_tokens=3000,
    )
    child["parentSpanId"] = "eee91bc0b4c2f1b3"
    answer = post_json(client, tenant, openllmetry, sdk, openinference, child)
    assert "partialSuccess" not in answer
    stored = stored_events(database, tenant.org_id)
    # the provider's response id is the event id, as the gateway's
    assert set(stored) == {"msg_01XFDUDYJgAACzvnptvVoYEL", "msg_02PwY3bq5vdNkX7bHwbUhUZ1"}
    for event in stored.values():  # the richer report (with the split) was kept
        assert event.cost_nano == CLAUDE_SPLIT_NANO
    before = snapshot(database)
    # The same call in a later export, from another instrumentation with other figures:
    # the call is already counted; neither refused as a conflicting id nor counted again.
    late = json_span(
        "eee91bc0b4c2f1b5", **CLAUDE, gen_ai__response__id="msg_01XFDUDYJgAACzvnptvVoYEL"
    )
    assert "partialSuccess" not in post_json(client, tenant, late)
    # A call the gateway recorded (its event id: the response id, its usage as reported)
    # and that is traced too: counted once.
    usage = {"input_tokens": 1000, "output_tokens": 500, "cache_read_input_tokens": 10_000}
    gateway = {"id": "msg_03GatewayProxied", "provider": "anthropic", "model": "claude-sonnet-4-6"}
    recorded = client.post(
        "/api/v1/usage", json={"events": [{**gateway, "usage": usage}]}, headers=tenant.headers
    )
    assert recorded.status_code == 200, recorded.text
    traced = json_span(
        "eee91bc0b4c2f1b6",
        **CLAUDE,
        gen_ai__response__id="msg_03GatewayProxied",
        gen_ai__usage__cache_write__input_tokens=3000,
    )
    assert "partialSuccess" not in post_json(client, tenant, traced)
    after = stored_events(database, tenant.org_id)
    assert len(after) == 3
    assert after["msg_03GatewayProxied"].cost_nano == 1000 * 3000 + 500 * 15_000 + 10_000 * 300
    assert snapshot(database).events == before.events + 1


def test_openinference_spans_are_read(
    client: TestClient, database: Database, tenant: Tenant
) -> None:
    claude = json_span(
        "fff91bc0b4c2f1a1",
        llm__provider="anthropic",
        llm__system="anthropic",
        llm__request__model_name="claude-sonnet-4-6",
        llm__model_name="claude-sonnet-4-6",
        llm__token_count__prompt=14_000,  # includes the cache, as gen_ai's input does
        llm__token_count__completion=500,
        llm__token_count__prompt_details__cache_read=10_000,
        llm__token_count__prompt_details__cache_write=3000,
        llm__token_count__total=14_500,
        openinference__span__kind="LLM",
    )
    gpt = json_span(
        "fff91bc0b4c2f1a2",
        llm__system="openai",
        llm__model_name="gpt-4o-2024-08-06",
        llm__token_count__prompt=2000,
        llm__token_count__completion=300,
        llm__token_count__prompt_details__cache_read=1024,
        openinference__span__kind="LLM",
    )
    # an agent's span repeats its calls' sums: not a call of its own
    agent = json_span(
        "fff91bc0b4c2f1a3",
        llm__token_count__prompt=16_000,
        llm__token_count__completion=800,
        openinference__span__kind="AGENT",
    )
    answer = post_json(client, tenant, claude, gpt, agent)
    assert "partialSuccess" not in answer
    stored = {event.model: event for event in stored_events(database, tenant.org_id).values()}
    assert stored["claude-sonnet-4-6"].provider == "anthropic"
    assert stored["claude-sonnet-4-6"].cost_nano == CLAUDE_5M_NANO
    assert (stored["gpt-4o-2024-08-06"].provider, stored["gpt-4o-2024-08-06"].cost_nano) == (
        "openai",
        6_720_000,
    )
    assert len(stored) == 2


def test_model_calls_that_cannot_be_recorded_are_rejected_with_a_reason(
    client: TestClient, database: Database, tenant: Tenant
) -> None:
    before = snapshot(database)
    no_counts = json_span(
        "abc91bc0b4c2f1a1", llm__model_name="claude-sonnet-4-6", openinference__span__kind="LLM"
    )
    no_usage = json_span(
        "abc91bc0b4c2f1a2", gen_ai__operation__name="chat", gen_ai__request__model="gpt-4o"
    )
    failed = json_span(
        "abc91bc0b4c2f1a3", gen_ai__operation__name="chat", gen_ai__request__model="gpt-4o"
    )
    failed["status"] = {"code": 2, "message": "overloaded"}  # a failed call: nothing billed
    answer = post_json(client, tenant, no_counts, no_usage, failed)
    assert answer["partialSuccess"]["rejectedSpans"] == "2", answer
    message = answer["partialSuccess"]["errorMessage"]
    assert message.startswith("span abc91bc0b4c2f1a1: a model call without token counts"), message
    assert message.endswith("(and 1 more)"), message
    assert snapshot(database) == before


def test_a_compressed_label_does_not_smuggle_ambiguous_json_elsewhere(
    client: TestClient, tenant: Tenant
) -> None:
    # a plain body that claims to be gzip, with a duplicate key, to the usage API
    body = b'{"events": [{"id": "a", "model": "gpt-4o", "input_tokens": 1, "input_tokens": 9}]}'
    headers = {**tenant.headers, "Content-Type": "application/json", "Content-Encoding": "gzip"}
    response = client.post("/api/v1/usage", content=body, headers=headers)
    assert response.status_code == 422, response.text


def test_spans_reusing_stored_ids_are_rejected_alone_and_the_rest_stored(
    client: TestClient, database: Database, tenant: Tenant
) -> None:
    """10,000 spans, 50 of them reusing stored span ids with other content: the 9,950
    are stored in one pass, the 50 reported (the export once re-ran for each refused span,
    held the writer for half a minute and was then refused whole)."""
    reused = [f"{n:016x}" for n in range(0, 10_000, 200)]  # 50 span ids, spread out
    headers = {**tenant.headers, "Content-Type": "application/x-protobuf"}
    response = client.post("/v1/traces", content=gpt_export(reused), headers=headers)
    assert response.status_code == 200, response.text
    first = snapshot(database)
    assert first.events == 50
    # the same span ids with other figures (2,001 input tokens), among 9,950 new spans
    export = gpt_export([f"{n:016x}" for n in range(10_000) if n % 200], input_tokens=2000)
    changed = gpt_export(reused, input_tokens=2001)
    response = client.post("/v1/traces", content=changed + export, headers=headers)
    assert response.status_code == 200, response.text
    partial = ExportTraceServiceResponse.FromString(response.content).partial_success
    assert partial.rejected_spans == 50
    assert partial.error_message.startswith(f"span {reused[0]}: id 'otel-"), partial
    assert "was already used for different content (and 49 more)" in partial.error_message
    stored = stored_events(database, tenant.org_id)
    assert len(stored) == 10_000
    # the 50 kept what they were stored with; every event is the hand-priced 6,720 micro-USD
    assert {event.input_tokens for event in stored.values()} == {976}
    assert {event.cost_nano for event in stored.values()} == {6_720_000}
    month = monthly_rows(database, tenant.org_id)["2026-06"]
    assert (month["event_count"], month["input_tokens"]) == (10_000, 976 * 10_000)
    assert month["cost_nano"] == 6_720_000 * 10_000


def test_spans_the_ledger_refuses_as_a_whole_are_rejected_not_a_failed_export(
    client: TestClient, database: Database, tenant: Tenant
) -> None:
    # An organization whose all-time input tokens are 10 short of the largest sum the
    # ledger keeps (int64): the next span's batch is refused whole (ledger_limit).
    assert "partialSuccess" not in post_json(
        client, tenant, json_span("aaa91bc0b4c2f1b1", **GPT_4O)
    )
    with database.session(write=True) as session:
        session.execute(
            text(
                "UPDATE token_usage_monthly SET input_tokens = :total WHERE organization_id = :org"
            ),
            {"total": 2**63 - 1 - 10, "org": tenant.org_id},
        )
    before = snapshot(database)
    answer = post_json(
        client,
        tenant,
        json_span("aaa91bc0b4c2f1b2", **GPT_4O),
        json_span("aaa91bc0b4c2f1b3", **GPT_4O),
    )
    assert answer["partialSuccess"]["rejectedSpans"] == "2", answer
    message = answer["partialSuccess"]["errorMessage"]
    assert message.startswith("span aaa91bc0b4c2f1b2: this batch would carry"), message
    assert "input_tokens past 9223372036854775807" in message, message
    assert snapshot(database) == before


def test_nul_in_one_span_of_a_json_export_refuses_that_span_alone(
    client: TestClient, database: Database, tenant: Tenant
) -> None:
    """NUL is refused in every JSON body, but an OTLP export is judged span by span (as
    its protobuf twin): a NUL in one span's text is that span's rejection, not the export's."""
    body = json_export(
        json_span("eee91bc0b4c2f1b1", **GPT_4O),
        json_span("eee91bc0b4c2f1b2", **{**GPT_4O, "gen_ai__request__model": "gpt-4o\u0000"}),
        json_span("eee91bc0b4c2f1b3", **GPT_4O, gen_ai__prompt="a\u0000b"),
    )
    response = client.post("/v1/traces", json=body, headers=tenant.headers)
    assert response.status_code == 200, response.text
    assert response.json()["partialSuccess"]["rejectedSpans"] == "1", response.text
    stored = stored_events(database, tenant.org_id)
    assert set(stored) == {
        "otel-5b8efff798038103d269b633813fc60c-eee91bc0b4c2f1b1",
        "otel-5b8efff798038103d269b633813fc60c-eee91bc0b4c2f1b3",
    }
