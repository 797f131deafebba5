"""OpenTelemetry GenAI ingestion: ``POST /v1/traces`` takes OTLP/HTTP trace exports.

Every span with the GenAI semantic conventions' usage attributes becomes one usage event,
through the same ingestion as ``POST /api/v1/usage``; other spans are ignored. A span maps
to an event as follows:

* id: ``otel-<trace id>-<span id>`` (hex), so that a re-sent export is stored once;
* organization: the ingest key's own; with a service key, the ``tokenledger.organization``
  attribute of the span, else of its resource (slug or id);
* timestamp: the span's end;
* model: ``gen_ai.response.model``, else ``gen_ai.request.model``;
* provider: ``gen_ai.provider.name``, else the older ``gen_ai.system`` (``gcp.gemini`` and
  the other Google names are ``google``); without either, inferred from the model;
* tokens: ``gen_ai.usage.input_tokens`` (which the conventions say includes cached input),
  ``gen_ai.usage.output_tokens``, ``gen_ai.usage.cache_read.input_tokens`` and
  ``gen_ai.usage.cache_creation.input_tokens`` (also the older ``cache_read_input_tokens``
  and ``cache_creation_input_tokens`` spellings). An instrumentation that reports input
  without the cache (Anthropic's meaning) is recognised by an input smaller than the
  cache tokens;
* optional ``tokenledger.refresh_id`` and ``openai.response.service_tier``.

Spans that cannot be recorded (no model, no organization, too old, ...) are counted in the
answer's ``partial_success``; the others are stored. Bodies may be gzip- or
deflate-compressed; the
decompressed size is bounded by the same limit as any request body.
"""

from __future__ import annotations

import base64
import json
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Request, Response
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from pydantic import ValidationError

from tokenledger.deps import AppSettings, IngestKey, Now, Session
from tokenledger.errors import DomainError
from tokenledger.ledger.ingest import MAX_FUTURE
from tokenledger.ledger.service import record_batch
from tokenledger.middleware import check_json
from tokenledger.usage.schemas import UsageBatch, UsageEventIn

router = APIRouter(tags=["ingestion"])

PROTOBUF: Final = "application/x-protobuf"
JSON: Final = "application/json"
ORGANIZATION_ATTRIBUTE: Final = "tokenledger.organization"
_INPUT = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
_OUTPUT = ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")
_CACHE_READ = (
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_read_input_tokens",
    "gen_ai.usage.input_tokens.cached",
)
_CACHE_WRITE = (
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.cache_creation_input_tokens",
    "gen_ai.usage.input_tokens.cache_write",
)
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
_MAX_REJECTION_ROUNDS: Final = 50
# zlib window bits of the encodings OTLP exporters use: gzip, and HTTP's deflate (zlib).
_WBITS: Final = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


async def export_body(request: Request) -> bytes:
    """The request body, gunzipped if it came compressed, within the body size limit."""
    body = await request.body()
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in _WBITS:
        raise DomainError(415, "unsupported_encoding", f"Content-Encoding {encoding!r}")
    limit: int = request.app.state.settings.max_body_bytes
    inflater = zlib.decompressobj(_WBITS[encoding])
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise DomainError(422, "invalid_body", f"not {encoding}: {exc}") from exc
    if len(data) > limit or inflater.unconsumed_tail:
        raise DomainError(413, "body_too_large", f"decompressed body over {limit} bytes")
    if not inflater.eof:
        raise DomainError(422, "invalid_body", f"truncated {encoding} body")
    return data


@dataclass(slots=True)
class _Rejections:
    count: int = 0
    first: str | None = None

    def add(self, message: str) -> None:
        self.count += 1
        if self.first is None:
            self.first = message


@router.post("/v1/traces")
def export_traces(
    request: Request,
    body: Annotated[bytes, Depends(export_body)],
    session: Session,
    key: IngestKey,
    settings: AppSettings,
    now: Now,
) -> Response:
    """OTLP/HTTP trace export: GenAI spans become usage events (protobuf or JSON)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in (PROTOBUF, JSON):
        raise DomainError(415, "unsupported_media_type", f"use {PROTOBUF} or {JSON}")
    export = _parse(body, media)
    rejected = _Rejections()
    events: list[UsageEventIn] = []
    oldest = now - timedelta(days=settings.backfill_max_age_days)
    for resource_spans in export.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                attributes = _attributes(span.attributes)
                if not any(name in attributes for name in (*_INPUT, *_OUTPUT)):
                    continue  # not a GenAI call with usage
                try:
                    event = _event(span, attributes, resource, key.organization_id)
                    at = event.timestamp
                    if at is None or at > now + MAX_FUTURE or at < oldest:
                        raise ValueError("span ended outside the accepted time window")
                except (ValueError, ValidationError) as exc:
                    rejected.add(f"span {span.span_id.hex()}: {_short(exc)}")
                    continue
                events.append(event)
    _record(request, session, events, key, settings, now, rejected)
    answer = ExportTraceServiceResponse()
    if rejected.count:
        answer.partial_success.CopyFrom(
            ExportTracePartialSuccess(
                rejected_spans=rejected.count, error_message=rejected.first or ""
            )
        )
    if media == JSON:
        return Response(json_format.MessageToJson(answer), media_type=JSON)
    return Response(answer.SerializeToString(), media_type=PROTOBUF)


def _record(
    request: Request,
    session: Session,
    events: list[UsageEventIn],
    key: IngestKey,
    settings: AppSettings,
    now: datetime,
    rejected: _Rejections,
) -> None:
    """Ingest the events as one batch; an event the ledger refuses is dropped and counted.

    Each attempt runs in a savepoint, so a refused attempt leaves nothing behind.
    """
    for _ in range(_MAX_REJECTION_ROUNDS):
        if not events:
            return
        # Built without the 1000-event bound of the JSON API: one export is one batch.
        batch = UsageBatch.model_construct(events=events)
        try:
            with session.begin_nested():
                record_batch(
                    session,
                    batch,
                    key_org_id=key.organization_id,
                    settings=settings,
                    now=now,
                    metrics=request.app.state.metrics,
                )
            return
        except DomainError as exc:
            index = exc.details.get("index") if isinstance(exc.details, dict) else None
            if not isinstance(index, int) or not 0 <= index < len(events):
                raise
            rejected.add(exc.message)
            events = events[:index] + events[index + 1 :]
    raise DomainError(422, "too_many_rejected_spans", "too many spans refused in one export")


def _parse(body: bytes, media: str) -> ExportTraceServiceRequest:
    export = ExportTraceServiceRequest()
    try:
        if media == PROTOBUF:
            export.ParseFromString(body)
        else:
            # The same rule as for every JSON body (middleware.py), also after inflating.
            problem = check_json(body)
            if problem is not None:
                raise DomainError(422, "validation_error", f"body: {problem}")
            data = json.loads(body)
            _hex_ids_to_base64(data)
            json_format.ParseDict(data, export, ignore_unknown_fields=True)
    except (DecodeError, json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise DomainError(422, "invalid_body", f"not an OTLP trace export: {_short(exc)}") from exc
    return export


def _hex_ids_to_base64(data: Any) -> None:
    """OTLP/JSON writes trace and span ids as hex; protobuf's JSON mapping wants base64."""
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    for resource_spans in data.get("resourceSpans") or []:
        for scope_spans in (resource_spans or {}).get("scopeSpans") or []:
            for span in (scope_spans or {}).get("spans") or []:
                for name in ("traceId", "spanId", "parentSpanId"):
                    value = span.get(name) if isinstance(span, dict) else None
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


def _count(attributes: dict[str, Any], names: tuple[str, ...]) -> int:
    value = _first(attributes, names)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{names[0]} must be an integer")
    return value


def _event(
    span: Any, attributes: dict[str, Any], resource: dict[str, Any], key_org_id: int | None
) -> UsageEventIn:
    if len(span.trace_id) != 16 or len(span.span_id) != 8:
        raise ValueError("a span needs a 16-byte trace id and an 8-byte span id")
    model = attributes.get("gen_ai.response.model") or attributes.get("gen_ai.request.model")
    if not isinstance(model, str) or not model:
        raise ValueError("no gen_ai.response.model or gen_ai.request.model")
    organization = attributes.get(ORGANIZATION_ATTRIBUTE) or resource.get(ORGANIZATION_ATTRIBUTE)
    if organization is None and key_org_id is None:
        raise ValueError(f"a service key needs the {ORGANIZATION_ATTRIBUTE} attribute")
    prompt = _count(attributes, _INPUT)
    cache_read = _count(attributes, _CACHE_READ)
    cache_write = _count(attributes, _CACHE_WRITE)
    # The conventions count cached input inside input_tokens; some instrumentations of
    # Anthropic report its own meaning (without the cache), which an input smaller than
    # the cache tokens gives away.
    uncached = prompt - cache_read - cache_write
    if uncached < 0:
        uncached = prompt
    provider = attributes.get("gen_ai.provider.name") or attributes.get("gen_ai.system")
    fields: dict[str, Any] = {
        "id": f"otel-{span.trace_id.hex()}-{span.span_id.hex()}",
        "timestamp": _instant(span.end_time_unix_nano),
        "model": model,
        "input_tokens": uncached,
        "output_tokens": _count(attributes, _OUTPUT),
        "cache_read_input_tokens": cache_read,
        "cache_creation_input_tokens": cache_write,
    }
    if organization is not None:
        fields["organization"] = str(organization)
    if isinstance(provider, str) and provider:
        fields["provider"] = _PROVIDERS.get(provider.lower(), provider.lower())
    refresh_id = attributes.get("tokenledger.refresh_id")
    if isinstance(refresh_id, str):
        fields["refresh_id"] = refresh_id
    tier = attributes.get("openai.response.service_tier") or attributes.get(
        "gen_ai.openai.response.service_tier"
    )
    if isinstance(tier, str) and tier:
        fields["service_tier"] = tier
    return UsageEventIn.model_validate(fields)


def _instant(unix_nano: int) -> datetime:
    seconds, nanos = divmod(unix_nano, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=nanos // 1000)


def _short(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        error = exc.errors()[0]
        return f"{'.'.join(map(str, error['loc']))}: {error['msg']}"
    return str(exc)[:300]
