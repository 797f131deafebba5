"""A local stand-in for the Anthropic Messages API and the OpenAI Chat Completions and
Responses APIs: each answer is built with the providers' own SDK types and sent as their
servers send it (JSON), so the real SDKs and the instrumentations around them read it as a
real answer, plain or streamed (server-sent events, as each provider streams, the
usage in Anthropic's message_start and message_delta, in OpenAI's last chunk when
stream_options.include_usage asks for it). Every answer gets a new response id.

One Anthropic call: 14,000 prompt tokens, of which 10,000 cache reads and 3,000 cache
writes (1,000 of 5 minutes, 2,000 of 1 hour), and 500 output tokens. One OpenAI call: 2,000
prompt tokens of which 1,024 cached, 300 output tokens.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anthropic.types as anthropic_types
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta
from openai.types.completion_usage import (
    CompletionTokensDetails,
    CompletionUsage,
    PromptTokensDetails,
)
from openai.types.responses import (
    Response,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseUsage,
)
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

CLAUDE = "claude-sonnet-4-6"
GPT_CHAT = "gpt-4o-2024-08-06"
GPT_RESPONSES = "gpt-4.1-2025-04-14"


def claude_message(response_id: str) -> dict[str, Any]:
    return anthropic_types.Message(
        id=response_id,
        type="message",
        role="assistant",
        model=CLAUDE,
        content=[anthropic_types.TextBlock(type="text", text="Fine.")],
        stop_reason="end_turn",
        stop_sequence=None,
        usage=anthropic_types.Usage(
            input_tokens=1000,  # Anthropic's meaning: without the cache
            output_tokens=500,
            cache_read_input_tokens=10_000,
            cache_creation_input_tokens=3000,
            cache_creation=anthropic_types.CacheCreation(
                ephemeral_5m_input_tokens=1000, ephemeral_1h_input_tokens=2000
            ),
            service_tier="standard",
        ),
    ).model_dump(mode="json", exclude_none=True)


def claude_stream(response_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The Messages stream of the same answer: (event name, data) in order."""
    whole = claude_message(response_id)
    start = {**whole, "content": [], "stop_reason": None}
    start["usage"] = {**whole["usage"], "output_tokens": 1}  # a placeholder, as Anthropic's
    events: list[Any] = [
        anthropic_types.RawMessageStartEvent(
            type="message_start", message=anthropic_types.Message.model_validate(start)
        ),
        anthropic_types.RawContentBlockStartEvent(
            type="content_block_start",
            index=0,
            content_block=anthropic_types.TextBlock(type="text", text=""),
        ),
        anthropic_types.RawContentBlockDeltaEvent(
            type="content_block_delta",
            index=0,
            delta=anthropic_types.TextDelta(type="text_delta", text="Fine."),
        ),
        anthropic_types.RawContentBlockStopEvent(type="content_block_stop", index=0),
        anthropic_types.RawMessageDeltaEvent(
            type="message_delta",
            delta={"stop_reason": "end_turn", "stop_sequence": None},  # type: ignore[arg-type]
            usage=anthropic_types.MessageDeltaUsage(
                output_tokens=500,
                input_tokens=1000,
                cache_read_input_tokens=10_000,
                cache_creation_input_tokens=3000,
            ),
        ),
        anthropic_types.RawMessageStopEvent(type="message_stop"),
    ]
    return [(event.type, event.model_dump(mode="json", exclude_none=True)) for event in events]


def chat_completion(response_id: str) -> dict[str, Any]:
    return ChatCompletion(
        id=response_id,
        object="chat.completion",
        created=1_781_000_000,
        model=GPT_CHAT,
        choices=[
            Choice(
                index=0,
                finish_reason="stop",
                message=ChatCompletionMessage(role="assistant", content="Fine."),
            )
        ],
        service_tier="default",
        usage=CompletionUsage(
            prompt_tokens=2000,
            completion_tokens=300,
            total_tokens=2300,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=1024),
            completion_tokens_details=CompletionTokensDetails(reasoning_tokens=0),
        ),
    ).model_dump(mode="json", exclude_none=True)


def chat_stream(response_id: str) -> list[dict[str, Any]]:
    """The Chat Completions stream of the same answer, the usage in a last chunk."""
    whole = chat_completion(response_id)

    def chunk(choices: list[ChunkChoice], usage: Any = None) -> dict[str, Any]:
        return ChatCompletionChunk(
            id=response_id,
            object="chat.completion.chunk",
            created=whole["created"],
            model=GPT_CHAT,
            service_tier="default",
            choices=choices,
            usage=usage,
        ).model_dump(mode="json", exclude_none=True)

    return [
        chunk([ChunkChoice(index=0, delta=ChoiceDelta(role="assistant", content=""))]),
        chunk([ChunkChoice(index=0, delta=ChoiceDelta(content="Fine."))]),
        chunk([ChunkChoice(index=0, delta=ChoiceDelta(), finish_reason="stop")]),
        chunk([], CompletionUsage.model_validate(whole["usage"])),
    ]


def response(response_id: str) -> dict[str, Any]:
    return Response(
        id=response_id,
        object="response",
        created_at=1_781_000_000,
        model=GPT_RESPONSES,
        status="completed",
        output=[
            ResponseOutputMessage(
                id=f"msg_{response_id}",
                type="message",
                role="assistant",
                status="completed",
                content=[ResponseOutputText(type="output_text", text="Fine.", annotations=[])],
            )
        ],
        parallel_tool_calls=True,
        tool_choice="auto",
        tools=[],
        usage=ResponseUsage(
            input_tokens=2000,
            input_tokens_details=InputTokensDetails(cached_tokens=1024, cache_write_tokens=0),
            output_tokens=300,
            output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
            total_tokens=2300,
        ),
    ).model_dump(mode="json", exclude_none=True)


class _Handler(BaseHTTPRequestHandler):
    numbers = itertools.count(1)

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)))
        number = next(self.numbers)
        stream = request.get("stream") is True
        if self.path.endswith("/v1/messages"):
            response_id = f"msg_01StandIn{number:012d}"
            if stream:
                self._events(
                    f"event: {name}\ndata: {json.dumps(data)}\n\n"
                    for name, data in claude_stream(response_id)
                )
                return
            body = claude_message(response_id)
        elif self.path.endswith("/chat/completions"):
            response_id = f"chatcmpl-StandIn{number}"
            if stream:
                chunks = chat_stream(response_id)
                if not (request.get("stream_options") or {}).get("include_usage"):
                    chunks = chunks[:-1]  # OpenAI sends usage only when asked
                self._events([*(f"data: {json.dumps(c)}\n\n" for c in chunks), "data: [DONE]\n\n"])
                return
            body = chat_completion(response_id)
        elif self.path.endswith("/responses") and not stream:
            body = response(f"resp_StandIn{number}")
        else:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", f"req_{number}")
        self.end_headers()
        self.wfile.write(data)

    def _events(self, events: Iterable[str]) -> None:
        data = "".join(events).encode()
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def standin_providers() -> Iterator[str]:
    """The stand-in on a free loopback port: its base URL (Anthropic's base_url; OpenAI's
    is this + /v1)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
