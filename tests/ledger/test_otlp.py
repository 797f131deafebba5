"""OpenTelemetry GenAI spans become usage events: POST /v1/traces, priced by hand.

The first tests run the real opentelemetry-sdk with its OTLP/HTTP exporter (protobuf,
gzip) against the app served by uvicorn on a loopback port, configured by the environment
variables the README documents. Rates (USD per million tokens, X micro-USD a token):
claude-sonnet-4-5 3 in, 15 out, 0.30 cache read, 3.75 cache write; gpt-4o 2.50 in, 1.25
cached, 10 out; gemini-2.5-flash 0.30 in, 0.03 cached, 2.50 out.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.conftest import Tenant, serving
from tests.ledger.conftest import LICENSE, snapshot, stored_events
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
    assert answer["partialSuccess"]["rejectedSpans"] == "2"
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
    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

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
    assert (
        client.post("/v1/traces", content=b"\xff\x00garbage", headers=protobuf).status_code == 422
    )
    plain = {**tenant.headers, "Content-Type": "text/plain"}
    assert client.post("/v1/traces", content=b"{}", headers=plain).status_code == 415
    assert client.post("/v1/traces", json=json_export()).status_code == 401
    # malformed or ambiguous JSON is refused as for every JSON body, compressed or not
    not_json = {**tenant.headers, "Content-Type": "application/json"}
    for bad in (b"[1, 2", b'{"resourceSpans": [], "resourceSpans": []}'):
        assert client.post("/v1/traces", content=bad, headers=not_json).status_code == 422
        gzipped = {**not_json, "Content-Encoding": "gzip"}
        response = client.post("/v1/traces", content=gzip.compress(bad), headers=gzipped)
        assert response.status_code == 422, response.text
    assert client.post("/v1/traces", content=b"[1, 2]", headers=not_json).status_code == 422
    assert (
        json.loads(client.post("/v1/traces", json=json_export(), headers=tenant.headers).text) == {}
    )
    assert snapshot(database) == before


def test_a_compressed_label_does_not_smuggle_ambiguous_json_elsewhere(
    client: TestClient, tenant: Tenant
) -> None:
    # a plain body that claims to be gzip, with a duplicate key, to the usage API
    body = b'{"events": [{"id": "a", "model": "gpt-4o", "input_tokens": 1, "input_tokens": 9}]}'
    headers = {**tenant.headers, "Content-Type": "application/json", "Content-Encoding": "gzip"}
    response = client.post("/api/v1/usage", content=body, headers=headers)
    assert response.status_code == 422, response.text
