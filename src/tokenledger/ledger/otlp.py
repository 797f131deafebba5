"""OpenTelemetry GenAI ingestion: ``POST /v1/traces`` takes OTLP/HTTP trace exports.

Every span with usage attributes becomes one usage event, through the same group commit
as ``POST /api/v1/usage``; other spans are ignored. A span maps to an event as follows:

* id: the provider's response id (``gen_ai.response.id``: ``msg_...``, ``chatcmpl-...``,
  ``resp_...``), the gateway's event id for the same call; a span without one gets
  ``otel-<trace id>-<span id>`` (hex). Either way a re-sent export is stored once;
* one provider call is counted once, however many spans report it: spans of one export
  with the same response id are one event, from the span with the most detailed usage
  (the first of equals); a span without a response id whose child span has one (OpenInference
  around the Anthropic SDK's own tracing) is that child's call. An event stored before
  under a response id (the gateway's, another instrumentation's) is the same call: the
  span is answered as its duplicate, whatever figures it gives, never refused or counted
  again;
* organization: the ingest key's own; with a service key, the ``tokenledger.organization``
  attribute of the span, else of its resource (slug or id);
* timestamp: the span's end;
* model: ``gen_ai.response.model``, else OpenInference's ``llm.response.model_name`` /
  ``llm.model_name``, else ``gen_ai.request.model`` / ``llm.request.model_name``;
* provider: ``gen_ai.provider.name``, else the older ``gen_ai.system``, else
  OpenInference's ``llm.provider`` / ``llm.system`` (``gcp.gemini`` and the other Google
  names are ``google``); without any, inferred from the model;
* tokens: ``gen_ai.usage.input_tokens`` (which the conventions say includes cached input;
  OpenInference's ``llm.token_count.prompt`` likewise), ``output_tokens``, cache reads
  (``gen_ai.usage.cache_read.input_tokens``, ``llm.token_count.prompt_details.cache_read``)
  and cache writes (``gen_ai.usage.cache_creation.input_tokens`` or
  ``gen_ai.usage.cache_write.input_tokens``, ``llm.token_count.prompt_details.cache_write``),
  with the older spellings. The split of cache writes into 5-minute and 1-hour ones comes
  from the Anthropic SDK's ``anthropic.usage.cache_creation.ephemeral_5m_input_tokens`` /
  ``_1h_input_tokens``, or from the provider's usage object in logfire's
  ``gen_ai.usage.raw``; without it every write is a 5-minute one. An instrumentation that
  reports input without the cache (Anthropic's meaning) is recognised by an input smaller
  than the cache tokens;
* optional ``tokenledger.refresh_id``, and the service tier (``openai.response.service_tier``,
  ``anthropic.response.service_tier``).

Spans that look like model calls but cannot be recorded (no model, no token counts, no
organization, too old, an id reused for other content, ...) are counted in the answer's
``partial_success`` with the first reason; the others are stored. The export is written in
chunks of at most EXPORT_CHUNK events, each one atomic group-commit batch, so that no
export holds the writer for long; a retried export is still counted once. Bodies may be
gzip (any number of members) or deflate; the decompressed size is bounded by the same
limit as any request body. An export that cannot be read is a 400 with OTLP's ``Status``
body, in the request's encoding.
"""

from __future__ import annotations

import base64
import json
import re
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from fastapi import APIRouter, Request, Response
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.proto.trace.v1.trace_pb2 import Status as SpanStatus
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from tokenledger.config import Settings
from tokenledger.deps import Now, UsageKey, get_hot
from tokenledger.errors import DomainError
from tokenledger.ledger.prepare import PreparedBatch, prepare
from tokenledger.ledger.writer import UsageWriter
from tokenledger.middleware import check_json
from tokenledger.usage.schemas import UsageBatch, UsageEventIn

router = APIRouter(tags=["ingestion"])

PROTOBUF: Final = "application/x-protobuf"
JSON: Final = "application/json"
ORGANIZATION_ATTRIBUTE: Final = "tokenledger.organization"
# Events per group-commit batch of one export (a writer's group holds up to 5000).
EXPORT_CHUNK: Final = 1000
_INPUT = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt")
_OUTPUT = (
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.completion_tokens",
    "llm.token_count.completion",
)
_CACHE_READ = (
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_read_input_tokens",
    "gen_ai.usage.input_tokens.cached",
    "llm.token_count.prompt_details.cache_read",
)
_CACHE_WRITE = (
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.cache_write.input_tokens",
    "gen_ai.usage.cache_creation_input_tokens",
    "gen_ai.usage.input_tokens.cache_write",
    "llm.token_count.prompt_details.cache_write",
)
_CACHE_5M = ("anthropic.usage.cache_creation.ephemeral_5m_input_tokens",)
_CACHE_1H = ("anthropic.usage.cache_creation.ephemeral_1h_input_tokens",)
_MODEL = (
    "gen_ai.response.model",
    "llm.response.model_name",
    "llm.model_name",
    "gen_ai.request.model",
    "llm.request.model_name",
)
_PROVIDER = ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system")
_TIER = (
    "openai.response.service_tier",
    "gen_ai.openai.response.service_tier",
    "anthropic.response.service_tier",
)
_RESPONSE_ID = "gen_ai.response.id"
_RAW_USAGE = "gen_ai.usage.raw"  # logfire: the provider's usage object, as JSON text
# A span of these GenAI operations, or an OpenInference LLM span, is a model call: one that
# cannot be recorded is reported, not silently ignored.
_CALL_OPERATIONS: Final = frozenset({"chat", "text_completion", "generate_content", "embeddings"})
# OpenInference's token counts belong to its LLM (and embedding) spans; its chain and agent
# spans may repeat their children's sums.
_OPENINFERENCE_CALLS: Final = frozenset({"LLM", "EMBEDDING"})
_PROVIDERS: Final = {
    "gcp.gemini": "google",
    "gcp.vertex_ai": "google",
    "gcp.gen_ai": "google",
    "vertex_ai": "google",
    "gemini": "google",
    "azure.ai.openai": "azure",
    "az.ai.openai": "azure",
    "aws.bedrock": "aws",
    "x_ai": "x-ai",
    "xai": "x-ai",
    "mistral_ai": "mistral",
}
# zlib window bits of the encodings OTLP exporters use: gzip, and HTTP's deflate (zlib).
_WBITS: Final = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
# gRPC status codes of OTLP's Status body, by HTTP status.
_GRPC_CODES: Final = {400: 3, 413: 8, 415: 3, 503: 14}
# prepare()'s messages name the event's place in its batch, which means nothing here.
_EVENT_PLACE = re.compile(r"^events\[\d+\](\.|: )")


def _bad(message: str) -> DomainError:
    return DomainError(400, "invalid_export", message)


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """A compressed body, whole (every gzip member), at most `limit` bytes once inflated."""
    if encoding in ("", "identity"):
        return body
    if encoding not in _WBITS:
        raise DomainError(415, "unsupported_encoding", f"Content-Encoding {encoding!r}")
    parts: list[bytes] = []
    size = 0
    rest = body
    while True:
        inflater = zlib.decompressobj(_WBITS[encoding])
        try:
            data = inflater.decompress(rest, limit - size + 1)
        except zlib.error as exc:
            raise _bad(f"not {encoding}: {exc}") from exc
        size += len(data)
        if size > limit or inflater.unconsumed_tail:
            raise DomainError(413, "body_too_large", f"decompressed body over {limit} bytes")
        if not inflater.eof:
            raise _bad(f"truncated {encoding} body")
        parts.append(data)
        rest = inflater.unused_data
        if not rest:
            return b"".join(parts)
        if encoding != "gzip":  # a gzip body may be several members; a zlib stream is one
            raise _bad(f"data after the end of the {encoding} stream")


@dataclass(slots=True)
class _Rejections:
    count: int = 0
    first: str | None = None

    def add(self, message: str) -> None:
        self.count += 1
        if self.first is None:
            self.first = message

    def message(self) -> str:
        more = f" (and {self.count - 1} more)" if self.count > 1 else ""
        return f"{self.first or ''}{more}"


@dataclass(slots=True)
class _Call:
    """A span read as a usage event, before it is stored."""

    event: UsageEventIn
    span: str  # the span id, hex, for messages
    trace_id: bytes
    span_id: bytes
    parent_id: bytes
    response_id: str | None  # the event's id is the provider's response id
    detail: int  # how many usage figures it gives: the richer of two reports wins


@router.post("/v1/traces")
async def export_traces(request: Request, key: UsageKey, now: Now) -> Response:
    """OTLP/HTTP trace export: GenAI spans become usage events (protobuf or JSON)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    settings: Settings = request.app.state.settings
    try:
        if media not in (PROTOBUF, JSON):
            raise DomainError(415, "unsupported_media_type", f"use {PROTOBUF} or {JSON}")
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        body = inflate(await request.body(), encoding, settings.max_body_bytes)
        rejected = _Rejections()
        calls = await run_in_threadpool(_read_export, body, media, key.organization_id, rejected)
    except DomainError as exc:
        return _failure(exc, media)
    writer: UsageWriter = request.app.state.usage_writer
    touch_key = key.touch_due
    for start in range(0, len(calls), EXPORT_CHUNK):
        chunk = calls[start : start + EXPORT_CHUNK]
        prepared = await run_in_threadpool(_prepare, request, chunk, key.organization_id, now)
        refused = prepared.rejected
        if prepared.events:  # else nothing to write: the writer is not taken
            if touch_key:
                prepared.touch_key_id = key.key_id
                touch_key = False
            try:
                refused = (await writer.write(prepared)).rejected  # prepare()'s and the write's
            except DomainError as exc:  # refused as a whole (a sum past its bound): its spans
                refused = [(item.index, exc.message) for item in prepared.events]
                refused += prepared.rejected
        for index, why in refused:
            rejected.add(f"span {chunk[index].span}: {_EVENT_PLACE.sub('', why)}")
    answer = ExportTraceServiceResponse()
    if rejected.count:
        answer.partial_success.CopyFrom(
            ExportTracePartialSuccess(
                rejected_spans=rejected.count, error_message=rejected.message()
            )
        )
    if media == JSON:
        return Response(json_format.MessageToJson(answer), media_type=JSON)
    return Response(answer.SerializeToString(), media_type=PROTOBUF)


def _failure(exc: DomainError, media: str) -> Response:
    """OTLP/HTTP's error answer: a google.rpc.Status in the request's encoding."""
    status = Status(code=_GRPC_CODES.get(exc.status, 2), message=exc.message)
    if media == PROTOBUF:
        return Response(status.SerializeToString(), exc.status, media_type=PROTOBUF)
    return Response(json_format.MessageToJson(status), exc.status, media_type=JSON)


def _prepare(
    request: Request, chunk: list[_Call], key_org_id: int | None, now: datetime
) -> PreparedBatch:
    hot = get_hot(request)
    # Built without the 1000-event bound of the JSON API (a chunk is at most as large).
    batch = UsageBatch.model_construct(events=[call.event for call in chunk])
    prepared = prepare(
        batch,
        key_org_id=key_org_id,
        organizations=hot.organizations,
        book=hot.price_book(),
        settings=request.app.state.settings,
        now=now,
        partial=True,
    )
    for item in prepared.events:
        item.call_id = chunk[item.index].response_id is not None
    return prepared


def _read_export(
    body: bytes, media: str, key_org_id: int | None, rejected: _Rejections
) -> list[_Call]:
    """The export's usage spans as events, each provider call once; the others rejected."""
    export = _parse(body, media)
    calls: list[_Call] = []
    # Spans with a response id that cannot be read: (span, response id, why).
    unreadable: list[tuple[str, str, str]] = []
    for resource_spans in export.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                attributes = _attributes(span.attributes)
                if not _is_call(span, attributes):
                    continue
                try:
                    calls.append(_call(span, attributes, resource, key_org_id))
                except (ValueError, ValidationError) as exc:
                    response_id = _response_id(attributes)
                    if response_id is None:
                        rejected.add(f"span {span.span_id.hex()}: {_short(exc)}")
                    else:
                        unreadable.append((span.span_id.hex(), response_id, _short(exc)))
    calls = _once_per_call(calls)
    # Another span of the same call was read: it is counted, so this one is no loss.
    recorded = {call.response_id for call in calls}
    for span_id, response_id, why in unreadable:
        if response_id not in recorded:
            rejected.add(f"span {span_id}: {why}")
    return calls


def _once_per_call(calls: list[_Call]) -> list[_Call]:
    """One event per provider call (the most detailed report of it), in the export's order."""
    # The parents of spans that carry a response id: a wrapper's span of the same call.
    wrapped = {(call.trace_id, call.parent_id) for call in calls if call.response_id}
    best: dict[tuple[Any, str], _Call] = {}
    for call in calls:
        if call.response_id is None and (call.trace_id, call.span_id) in wrapped:
            continue
        key = (call.event.organization, call.event.id)
        found = best.get(key)
        if found is None or call.detail > found.detail:
            best[key] = call
    chosen = {id(call) for call in best.values()}
    return [call for call in calls if id(call) in chosen]


def _parse(body: bytes, media: str) -> ExportTraceServiceRequest:
    export = ExportTraceServiceRequest()
    try:
        if media == PROTOBUF:
            export.ParseFromString(body)
        else:
            # The same rule as for every JSON body (middleware.py), also after inflating;
            # but NUL is judged span by span, as in protobuf: a span whose text holds one
            # is rejected alone (its fields refuse control characters).
            problem = check_json(body, allow_nul=True)
            if problem is not None:
                raise _bad(f"body: {problem}")
            data = json.loads(body)
            _hex_ids_to_base64(data)
            json_format.ParseDict(data, export, ignore_unknown_fields=True)
    except (DecodeError, json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise _bad(f"not an OTLP trace export: {_short(exc)}") from exc
    return export


def _objects(value: Any, where: str) -> list[dict[str, Any]]:
    """A JSON list of objects (absent or null: empty); anything else is not OTLP."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ValueError(f"{where} must be a list of objects")
    return value


def _hex_ids_to_base64(data: Any) -> None:
    """OTLP/JSON writes trace and span ids as hex; protobuf's JSON mapping wants base64."""
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    for resource_spans in _objects(data.get("resourceSpans"), "resourceSpans"):
        for scope_spans in _objects(resource_spans.get("scopeSpans"), "scopeSpans"):
            for span in _objects(scope_spans.get("spans"), "spans"):
                for name in ("traceId", "spanId", "parentSpanId"):
                    value = span.get(name)
                    if isinstance(value, str) and value:
                        span[name] = base64.b64encode(bytes.fromhex(value)).decode()


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind in ("string_value", "bool_value", "int_value", "double_value"):
        return getattr(value, kind)
    return None  # arrays, maps and bytes carry nothing a usage event needs


def _attributes(attributes: Any) -> dict[str, Any]:
    pairs: list[KeyValue] = list(attributes)
    return {pair.key: _value(pair.value) for pair in pairs}


def _first(attributes: dict[str, Any], names: tuple[str, ...]) -> Any:
    return next((attributes[name] for name in names if attributes.get(name) is not None), None)


def _count(attributes: dict[str, Any], names: tuple[str, ...]) -> int | None:
    value = _first(attributes, names)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{names[0]} must be an integer")
    return value


def _openinference_call(attributes: dict[str, Any]) -> bool:
    return attributes.get("openinference.span.kind", "LLM") in _OPENINFERENCE_CALLS


def _has_usage(attributes: dict[str, Any]) -> bool:
    if any(name in attributes for name in (*_INPUT[:2], *_OUTPUT[:2])):
        return True
    return _openinference_call(attributes) and any(
        name in attributes for name in (_INPUT[2], _OUTPUT[2])
    )


def _is_call(span: Span, attributes: dict[str, Any]) -> bool:
    """A span that reports usage, or a model call that should have (unless it failed)."""
    if _has_usage(attributes):
        return True
    if span.status.code == SpanStatus.STATUS_CODE_ERROR:
        return False  # a failed call: the provider billed nothing
    return (
        attributes.get("gen_ai.operation.name") in _CALL_OPERATIONS
        or attributes.get("openinference.span.kind") == "LLM"
    )


def _response_id(attributes: dict[str, Any]) -> str | None:
    value = attributes.get(_RESPONSE_ID)
    return value if isinstance(value, str) and value else None


def _raw_split(attributes: dict[str, Any]) -> tuple[int | None, int | None]:
    """The 5-minute and 1-hour cache writes of logfire's copy of an Anthropic usage object."""
    raw = attributes.get(_RAW_USAGE)
    if not isinstance(raw, str):
        return None, None
    try:
        usage = json.loads(raw)
    except ValueError:
        return None, None
    split = usage.get("cache_creation") if isinstance(usage, dict) else None
    if not isinstance(split, dict):
        return None, None
    five, hour = (split.get(f"ephemeral_{n}_input_tokens") for n in ("5m", "1h"))
    return (
        five if type(five) is int else None,
        hour if type(hour) is int else None,
    )


def _call(
    span: Span, attributes: dict[str, Any], resource: dict[str, Any], key_org_id: int | None
) -> _Call:
    if len(span.trace_id) != 16 or len(span.span_id) != 8:
        raise ValueError("a span needs a 16-byte trace id and an 8-byte span id")
    if not _has_usage(attributes):
        raise ValueError("a model call without token counts (gen_ai.usage.*, llm.token_count.*)")
    model = _first(attributes, _MODEL)
    if not isinstance(model, str) or not model:
        raise ValueError("no gen_ai.response.model or gen_ai.request.model (nor llm.model_name)")
    organization = attributes.get(ORGANIZATION_ATTRIBUTE) or resource.get(ORGANIZATION_ATTRIBUTE)
    if organization is None and key_org_id is None:
        raise ValueError(f"a service key needs the {ORGANIZATION_ATTRIBUTE} attribute")
    prompt = _count(attributes, _INPUT) or 0
    output = _count(attributes, _OUTPUT) or 0
    cache_read = _count(attributes, _CACHE_READ) or 0
    cache_write = _count(attributes, _CACHE_WRITE)
    five, hour = _count(attributes, _CACHE_5M), _count(attributes, _CACHE_1H)
    if five is None and hour is None:
        five, hour = _raw_split(attributes)
    if cache_write is None and (five is not None or hour is not None):
        cache_write = (five or 0) + (hour or 0)
    cache_write = cache_write or 0
    split: dict[str, int] | None = None
    if hour is not None or five is not None:
        # One of the two is enough: the writes are their sum.
        hour = hour if hour is not None else cache_write - (five or 0)
        five = five if five is not None else cache_write - hour
        if five < 0 or hour < 0 or five + hour != cache_write:
            raise ValueError("the 5-minute and 1-hour cache writes do not add up to the writes")
        split = {"ephemeral_5m_input_tokens": five, "ephemeral_1h_input_tokens": hour}
    # The conventions count cached input inside input_tokens; some instrumentations of
    # Anthropic report its own meaning (without the cache), which an input smaller than
    # the cache tokens gives away.
    uncached = prompt - cache_read - cache_write
    if uncached < 0:
        uncached = prompt
    response_id = _response_id(attributes)
    span_key = f"otel-{span.trace_id.hex()}-{span.span_id.hex()}"
    fields: dict[str, Any] = {
        "id": response_id if response_id is not None and len(response_id) <= 128 else span_key,
        "timestamp": _instant(span.end_time_unix_nano),
        "model": model,
        "input_tokens": uncached,
        "output_tokens": output,
        "cache_read_input_tokens": cache_read,
        "cache_creation_input_tokens": cache_write,
    }
    if split is not None:
        fields["cache_creation"] = split
    if organization is not None:
        fields["organization"] = str(organization)
    provider = _first(attributes, _PROVIDER)
    if isinstance(provider, str) and provider:
        fields["provider"] = _PROVIDERS.get(provider.lower(), provider.lower())
    refresh_id = attributes.get("tokenledger.refresh_id")
    if isinstance(refresh_id, str):
        fields["refresh_id"] = refresh_id
    tier = _first(attributes, _TIER)
    if isinstance(tier, str) and tier:
        fields["service_tier"] = tier
    event = UsageEventIn.model_validate(fields)
    return _Call(
        event=event,
        span=span.span_id.hex(),
        trace_id=span.trace_id,
        span_id=span.span_id,
        parent_id=span.parent_span_id,
        response_id=response_id if fields["id"] == response_id else None,
        detail=sum(1 for count in (prompt, output, cache_read, cache_write) if count)
        + (split is not None),
    )


def _instant(unix_nano: int) -> datetime:
    seconds, nanos = divmod(unix_nano, 1_000_000_000)
    try:
        return datetime.fromtimestamp(seconds, UTC).replace(microsecond=nanos // 1000)
    except (OverflowError, OSError) as exc:  # past year 9999
        raise ValueError("the span's end time is out of range") from exc


def _short(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        error = exc.errors()[0]
        return f"{'.'.join(map(str, error['loc']))}: {error['msg']}"
    return str(exc)[:300]
