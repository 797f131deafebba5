"""A local stand-in for the Anthropic Messages API and the OpenAI Chat Completions and
Responses APIs: each answer is built with the providers' own SDK types and sent as their
servers send it (JSON), so the real SDKs and the instrumentations around them read it as a
real answer. Every answer gets a new response id.

One Anthropic call: 14,000 prompt tokens, of which 10,000 cache reads and 3,000 cache
writes (1,000 of 5 minutes, 2,000 of 1 hour), and 500 output tokens. One OpenAI call: 2,000
prompt tokens of which 1,024 cached, 300 output tokens.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anthropic.types as anthropic_types
from openai.types.chat import ChatCompletion, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice
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
        self.rfile.read(int(self.headers.get("content-length") or 0))
        number = next(self.numbers)
        if self.path.endswith("/v1/messages"):
            body = claude_message(f"msg_01StandIn{number:012d}")
        elif self.path.endswith("/chat/completions"):
            body = chat_completion(f"chatcmpl-StandIn{number}")
        elif self.path.endswith("/responses"):
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
