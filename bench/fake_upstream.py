"""The bench's stand-in for the Anthropic Messages API: plain ASGI, answering after a fixed
delay (FAKE_DELAY seconds, default 0.05: about a fast model's time to first byte), as JSON
or as server-sent events, with a new message id each time."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from typing import Any

DELAY = float(os.environ.get("FAKE_DELAY", "0.05"))
PREFIX = os.urandom(4).hex()
_ids = itertools.count()
USAGE = {
    "input_tokens": 120,
    "output_tokens": 40,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
}


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


def _stream(message_id: str, model: str) -> list[bytes]:
    start = {
        "id": message_id, "type": "message", "role": "assistant", "model": model,
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {**USAGE, "output_tokens": 1},
    }
    block = {"type": "text", "text": ""}
    events = [
        _event("message_start", {"type": "message_start", "message": start}),
        _event("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": block}),
    ]
    for piece in ("Hello", ", ", "world", "!"):
        events.append(_event("content_block_delta", {
            "type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": piece}}))
    events += [
        _event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _event("message_delta", {"type": "message_delta",
                                 "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                 "usage": USAGE}),
        _event("message_stop", {"type": "message_stop"}),
    ]
    return events


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/healthz":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    request = json.loads(body)
    await asyncio.sleep(DELAY)
    message_id = f"msg_{PREFIX}{next(_ids)}"
    model = request["model"]
    if request.get("stream"):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for event in _stream(message_id, model):
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    answer = json.dumps({
        "id": message_id, "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": "Hello, world!"}], "stop_reason": "end_turn",
        "stop_sequence": None, "usage": USAGE,
    }).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})
