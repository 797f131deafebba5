"""A stand-in for the providers' APIs: Anthropic Messages, OpenAI Chat Completions and
Responses, as JSON and as server-sent events, shaped after the SDKs' own types.

Tests steer it per request with headers (which the gateway forwards like any other):
x-fake-scenario (ok, error-STATUS, slow-MS, break, gate), x-fake-usage (the usage to
report, a JSON object in the API's own shape) and x-fake-id (the response id).
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

UPSTREAM_ANTHROPIC_KEY = "sk-ant-upstream-secret-0123456789"
UPSTREAM_OPENAI_KEY = "sk-openai-upstream-secret-0123456789"
RETRY_AFTER = "7"


@dataclass
class Fake:
    """The upstream's state, shared with the test thread."""

    received: list[dict[str, Any]] = field(default_factory=list)  # headers and body of each
    gate: threading.Event = field(default_factory=threading.Event)  # "gate": rest of stream
    finished: list[str] = field(default_factory=list)  # ids of streams sent to their end
    delay: float = 0.0  # seconds before every answer (the bench's 50 ms)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _default_usage(api: str) -> dict[str, Any]:
    if api == "anthropic":
        return {
            "input_tokens": 100,
            "output_tokens": 50,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
    if api == "chat":
        return {
            "prompt_tokens": 100,
            "completion_tokens": 50,
            "total_tokens": 150,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }
    return {
        "input_tokens": 100,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 50,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 150,
    }


# The providers' documented maxima, for the worst case the stand-in reports: an image is at
# most about 1,600 tokens on Anthropic (resized to 1.15 megapixels, 750 pixels a token) and
# 2,500 on OpenAI; a request with tools gets Anthropic's tool-use system prompt (346
# tokens); each message a few tokens of framing.
IMAGE_MAX = {"anthropic": 1_600, "chat": 2_500, "responses": 2_500}
TOOL_PROMPT = 346
MESSAGE_FRAMING = 4


def _strings(value: Any, skip: frozenset[str] = frozenset({"source", "image_url"})) -> int:
    """UTF-8 bytes of every string in a request but the images' data."""
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, dict):
        return sum(
            len(key.encode()) + _strings(item) for key, item in value.items() if key not in skip
        )
    if isinstance(value, list):
        return sum(_strings(item) for item in value)
    return 0


def _images(value: Any) -> int:
    if isinstance(value, dict):
        own = int(value.get("type") in ("image", "image_url", "input_image"))
        return own + sum(_images(item) for item in value.values())
    if isinstance(value, list):
        return sum(_images(item) for item in value)
    return 0


def worst_prompt_tokens(api: str, body: dict[str, Any], window: int) -> int:
    """The most prompt tokens the request can be counted as: a token per byte of text, the
    documented maxima above, and never more than the context window (a longer prompt is
    refused, not billed)."""
    messages = body.get("messages") or body.get("input") or []
    tokens = (
        _strings(body)
        + _images(body) * IMAGE_MAX[api]
        + (TOOL_PROMPT if body.get("tools") else 0)
        + MESSAGE_FRAMING * (len(messages) if isinstance(messages, list) else 1)
    )
    return min(tokens, window)


def worst_output_tokens(api: str, body: dict[str, Any]) -> int:
    if api == "anthropic":
        return int(body["max_tokens"])
    if api == "chat":
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        return int(limit) * int(body.get("n") or 1)
    return int(body["max_output_tokens"])


def _sse(event: str | None, data: Any) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def _error(api: str, status: int) -> Response:
    headers = {
        "retry-after": RETRY_AFTER,
        "request-id": "req_fake_error",
        "x-ratelimit-limit-requests": "50",
    }
    if api == "anthropic":
        kinds = {
            400: "invalid_request_error",
            401: "authentication_error",
            403: "permission_error",
            404: "not_found_error",
            429: "rate_limit_error",
            500: "api_error",
            529: "overloaded_error",
        }
        body: dict[str, Any] = {
            "type": "error",
            "error": {"type": kinds.get(status, "api_error"), "message": f"fake {status}"},
        }
    else:
        body = {
            "error": {
                "message": f"fake {status}",
                "type": "rate_limit_error" if status == 429 else "server_error",
                "param": None,
                "code": None,
            }
        }
    return JSONResponse(body, status, headers=headers)


class Stream:
    """The events of one streamed answer, with the scenario's pauses and breaks."""

    def __init__(self, fake: Fake, scenario: str, events: list[bytes], answer_id: str) -> None:
        self.fake = fake
        self.scenario = scenario
        self.events = events
        self.answer_id = answer_id

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for index, event in enumerate(self.events):
            if self.scenario == "break" and index == 3:
                raise RuntimeError("the upstream stream breaks off")
            yield event
            if index == 0 and self.scenario == "gate":
                opened = await asyncio.to_thread(self.fake.gate.wait, 20)
                assert opened, "the test never opened the gate"
            if self.scenario == "paced":
                await asyncio.sleep(0.05)
        with self.fake.lock:
            self.fake.finished.append(self.answer_id)


def create_upstream(fake: Fake) -> Starlette:
    async def handle(request: Request, api: str) -> Response:
        body = await request.json()
        with fake.lock:
            fake.received.append({"headers": dict(request.headers), "body": body, "api": api})
        expected = (
            {"x-api-key": UPSTREAM_ANTHROPIC_KEY}
            if api == "anthropic"
            else {"authorization": f"Bearer {UPSTREAM_OPENAI_KEY}"}
        )
        for name, value in expected.items():
            if request.headers.get(name) != value:
                return _error(api, 401)
        scenario = request.headers.get("x-fake-scenario", "ok")
        if fake.delay:
            await asyncio.sleep(fake.delay)
        if scenario.startswith("slow-"):
            await asyncio.sleep(int(scenario[5:]) / 1000)
        if scenario.startswith("error-"):
            return _error(api, int(scenario[6:]))
        usage = json.loads(request.headers.get("x-fake-usage", "null")) or _default_usage(api)
        answer_id = request.headers.get("x-fake-id") or _new_id(api)
        model = body["model"]
        headers = {"request-id": "req_fake", "anthropic-ratelimit-requests-remaining": "49"}
        if body.get("stream"):
            if api == "anthropic":
                events = _anthropic_events(answer_id, model, usage)
            elif api == "chat":
                events = _chat_events(answer_id, model, usage, body)
            else:
                events = _responses_events(answer_id, model, usage)
            return StreamingResponse(
                Stream(fake, scenario, events, answer_id),
                media_type="text/event-stream",
                headers=headers,
            )
        if api == "anthropic":
            answer = _anthropic_message(answer_id, model, usage)
        elif api == "chat":
            answer = _chat_completion(answer_id, model, usage)
        else:
            answer = _response(answer_id, model, usage, "completed")
        return JSONResponse(answer, headers=headers)

    async def messages(request: Request) -> Response:
        return await handle(request, "anthropic")

    async def count_tokens(request: Request) -> Response:
        body = await request.json()
        with fake.lock:
            fake.received.append(
                {"headers": dict(request.headers), "body": body, "api": "count_tokens"}
            )
        return JSONResponse({"input_tokens": 42})

    async def chat(request: Request) -> Response:
        return await handle(request, "chat")

    async def responses(request: Request) -> Response:
        return await handle(request, "responses")

    return Starlette(
        routes=[
            Route("/v1/messages", messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/responses", responses, methods=["POST"]),
        ]
    )


def _new_id(api: str) -> str:
    prefix = {"anthropic": "msg_", "chat": "chatcmpl-", "responses": "resp_"}[api]
    return prefix + uuid.uuid4().hex


TEXT = ["Hello", ", ", "world", "!"]


def _anthropic_message(answer_id: str, model: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": answer_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "".join(TEXT)}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }


def _anthropic_events(answer_id: str, model: str, usage: dict[str, Any]) -> list[bytes]:
    start_usage = {**usage, "output_tokens": 1}
    message = {**_anthropic_message(answer_id, model, start_usage), "content": []}
    message["stop_reason"] = None
    events = [
        _sse("message_start", {"type": "message_start", "message": message}),
        _sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        _sse("ping", {"type": "ping"}),
    ]
    for piece in TEXT:
        events.append(
            _sse(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": piece},
                },
            )
        )
    events += [
        _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": usage,
            },
        ),
        _sse("message_stop", {"type": "message_stop"}),
    ]
    return events


def _chat_completion(answer_id: str, model: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": answer_id,
        "object": "chat.completion",
        "created": 1_763_467_200,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(TEXT), "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }


def _chat_events(
    answer_id: str, model: str, usage: dict[str, Any], body: dict[str, Any]
) -> list[bytes]:
    include_usage = (body.get("stream_options") or {}).get("include_usage") is True

    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        data: dict[str, Any] = {
            "id": answer_id,
            "object": "chat.completion.chunk",
            "created": 1_763_467_200,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            data["usage"] = None
        return _sse(None, data)

    events = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
    events += [chunk({"content": piece}, None) for piece in TEXT]
    events.append(chunk({}, "stop"))
    if include_usage:
        events.append(
            _sse(
                None,
                {
                    "id": answer_id,
                    "object": "chat.completion.chunk",
                    "created": 1_763_467_200,
                    "model": model,
                    "service_tier": "default",
                    "system_fingerprint": "fp_fake",
                    "choices": [],
                    "usage": usage,
                },
            )
        )
    events.append(_sse(None, "[DONE]"))
    return events


def _output_message(answer_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "id": "msg_" + answer_id[5:],
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def _response(
    answer_id: str, model: str, usage: dict[str, Any] | None, status: str
) -> dict[str, Any]:
    done = status == "completed"
    return {
        "id": answer_id,
        "object": "response",
        "created_at": 1_763_467_200,
        "status": status,
        "model": model,
        "output": [_output_message(answer_id, "".join(TEXT), "completed")] if done else [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "metadata": {},
        "temperature": 1.0,
        "top_p": 1.0,
        "service_tier": "default",
        "text": {"format": {"type": "text"}},
    }


def _responses_events(answer_id: str, model: str, usage: dict[str, Any]) -> list[bytes]:
    item_id = "msg_" + answer_id[5:]
    sequence = iter(range(1000))

    def event(kind: str, **data: Any) -> bytes:
        return _sse(kind, {"type": kind, "sequence_number": next(sequence), **data})

    created = _response(answer_id, model, None, "in_progress")
    empty_item = {**_output_message(answer_id, "", "in_progress"), "content": []}
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    events = [
        event("response.created", response=created),
        event("response.in_progress", response=created),
        event("response.output_item.added", output_index=0, item=empty_item),
        event(
            "response.content_part.added",
            item_id=item_id,
            output_index=0,
            content_index=0,
            part=part,
        ),
    ]
    for piece in TEXT:
        events.append(
            event(
                "response.output_text.delta",
                item_id=item_id,
                output_index=0,
                content_index=0,
                delta=piece,
                logprobs=[],
            )
        )
    text = "".join(TEXT)
    events += [
        event(
            "response.output_text.done",
            item_id=item_id,
            output_index=0,
            content_index=0,
            text=text,
            logprobs=[],
        ),
        event(
            "response.content_part.done",
            item_id=item_id,
            output_index=0,
            content_index=0,
            part={**part, "text": text},
        ),
        event(
            "response.output_item.done",
            output_index=0,
            item=_output_message(answer_id, text, "completed"),
        ),
        event("response.completed", response=_response(answer_id, model, usage, "completed")),
    ]
    return events
