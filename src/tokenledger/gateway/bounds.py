"""The hold of a call: an amount its real cost cannot exceed, from the request alone.

Input bound (tokens):
* text, tool definitions, system prompts, and the JSON around them: every token of a
  byte-level tokenizer is at least one byte, so a text has at most as many tokens as
  UTF-8 bytes, and the request body (whose JSON escapes only lengthen text) has at least
  that many bytes. The body's own framing (keys, quotes, braces: at least 20 bytes per
  message) outweighs the few tokens a provider adds per message; the tool-use system
  prompt a provider adds is covered by TOOL_TOKENS per tool plus REQUEST_TOKENS;
* images (Anthropic "image", OpenAI "image_url" / "input_image"): their base64 or URL
  bytes are not counted; each adds IMAGE_TOKENS, above every provider's documented
  maximum for one image (Anthropic about 1,600 after resizing, OpenAI's high detail
  under 2,500);
* documents, files and audio (PDF pages are priced as text plus an image per page, a
  file id or URL says nothing of its size): the model's context window;
* and never more than the context window (genai-prices' data), which no prompt exceeds.

Output bound: max_tokens (Anthropic), max_completion_tokens or max_tokens (OpenAI Chat,
times n choices), max_output_tokens (Responses); when absent, the context window, which
no answer exceeds either.

Price: the model's price applied to the input bound at the dearest rate an input token
can get (plain input, 5-minute or 1-hour cache write, cache read: the cost is linear in
the split, so its maximum is at one of these four), with the long-context tier the bound
reaches (tiers only raise rates), under the standard and the priority tier (and a speed
the request asks for); the highest of these quotes is held. A bound that cannot be given
(no price for the model, or nothing bounds the output or a document) is None.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from tokenledger.pricing.engine import PriceBook, TokenUsage, UsageError

IMAGE_TOKENS: Final = 10_000
TOOL_TOKENS: Final = 2_000
REQUEST_TOKENS: Final = 1_000
_IMAGE_TYPES: Final = frozenset({"image", "image_url", "input_image"})
_UNBOUNDED_TYPES: Final = frozenset(
    {"document", "file", "input_file", "input_audio", "audio", "container_upload"}
)
_MEDIA_KEYS: Final = ("source", "image_url", "file_data", "file_id", "file_url", "data")


@dataclass(frozen=True, slots=True)
class Bound:
    input_tokens: int | None  # None: only the context window bounds it
    output_tokens: int | None  # None: the request sets no limit


def _walk(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def _media_bytes(block: dict[str, Any]) -> int:
    """The bytes of an image's data or address inside the body (not counted as text)."""
    return sum(
        len(json.dumps(block[key], ensure_ascii=False).encode())
        for key in _MEDIA_KEYS
        if key in block
    )


def _count(value: Any) -> int | None:
    return value if type(value) is int and value >= 0 else None


def request_bound(api: str, body: dict[str, Any], body_bytes: int) -> Bound:
    """The token bounds of a request (api: anthropic, openai-chat, openai-responses)."""
    images = 0
    media = 0
    unbounded = False
    for block in _walk(body):
        kind = block.get("type")
        if kind in _IMAGE_TYPES:
            images += 1
            media += _media_bytes(block)
        elif kind in _UNBOUNDED_TYPES:
            unbounded = True
    tools = body.get("tools")
    tool_count = len(tools) if isinstance(tools, list) else 0
    input_tokens = None
    if not unbounded:
        input_tokens = (
            max(0, body_bytes - media)
            + images * IMAGE_TOKENS
            + tool_count * TOOL_TOKENS
            + REQUEST_TOKENS
        )
    if api == "anthropic":
        output = _count(body.get("max_tokens"))
    elif api == "openai-chat":
        output = _count(body.get("max_completion_tokens"))
        if output is None:
            output = _count(body.get("max_tokens"))
        choices = _count(body.get("n"))
        if output is not None and choices is not None and choices > 1:
            output *= choices
    else:
        output = _count(body.get("max_output_tokens"))
    return Bound(input_tokens=input_tokens, output_tokens=output)


# Anthropic's 1M-token context (the anthropic-beta "context-1m-..." flag) on models whose
# price data names a 200k window.
LONG_CONTEXT_WINDOW: Final = 1_000_000


def hold_nano(
    book: PriceBook,
    provider: str,
    model: str,
    bound: Bound,
    at: datetime,
    speed: str | None = None,
    long_context: bool = False,
) -> int | None:
    """The most the call can cost in nano-USD (module docstring), None when unbounded."""
    window = book.context_window(provider, model)
    if long_context and window is not None:
        window = max(window, LONG_CONTEXT_WINDOW)
    input_tokens = bound.input_tokens
    if window is not None:
        input_tokens = window if input_tokens is None else min(input_tokens, window)
    output_tokens = bound.output_tokens if bound.output_tokens is not None else window
    if input_tokens is None or output_tokens is None:
        return None
    splits = (
        TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens),
        TokenUsage(cache_creation_input_tokens=input_tokens, output_tokens=output_tokens),
        TokenUsage(
            cache_creation_input_tokens=input_tokens,
            cache_write_1h_tokens=input_tokens,
            output_tokens=output_tokens,
        ),
        TokenUsage(cache_read_input_tokens=input_tokens, output_tokens=output_tokens),
    )
    contexts: list[dict[str, str] | None] = [None, {"service_tier": "priority"}]
    if speed is not None and speed != "standard":
        contexts.append({"speed": speed})
    highest: int | None = None
    for context in contexts:
        for usage in splits:
            try:
                quote = book.quote(provider, model, usage, at, context)
            except UsageError:
                continue
            if quote is None:
                return None
            if highest is None or quote.cost_nano > highest:
                highest = quote.cost_nano
    return highest
