"""The hold is an upper bound: for any request, the cost of the worst usage the stand-in
upstream could report for it (priced by genai-prices itself, not by our engine) is never
above what the gateway holds."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

from genai_prices import Usage, calc_price
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.gateway.upstream import worst_output_tokens, worst_prompt_tokens
from tokenledger.gateway.bounds import LONG_CONTEXT_WINDOW, hold_nano, request_bound
from tokenledger.pricing.engine import default_price_book

AT = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)
MODELS = {
    "anthropic": ["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-6"],
    "chat": ["gpt-4o", "gpt-4o-mini", "gpt-4.1-mini"],
    "responses": ["gpt-4o", "gpt-4.1-mini"],
}
API_NAMES = {"anthropic": "anthropic", "chat": "openai-chat", "responses": "openai-responses"}
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5E"
    "rkJggg=="
)

texts = st.text(min_size=0, max_size=200)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, dict[str, object], bool]:
    api = draw(st.sampled_from(sorted(MODELS)))
    model = draw(st.sampled_from(MODELS[api]))
    padding = draw(st.sampled_from([0, 0, 150_000, 260_000]))
    contents: list[object] = [draw(texts) + "a" * padding]
    images = draw(st.integers(0, 3))
    for _ in range(images):
        if api == "anthropic":
            source = {"type": "base64", "media_type": "image/png", "data": PNG}
            contents.append({"type": "image", "source": source})
        elif api == "chat":
            contents.append({"type": "image_url", "image_url": {"url": "https://x.test/a.png"}})
        else:
            contents.append({"type": "input_image", "image_url": "https://x.test/a.png"})
    text_type = "input_text" if api == "responses" else "text"
    blocks = [c if isinstance(c, dict) else {"type": text_type, "text": c} for c in contents]
    turns = draw(st.integers(1, 4))
    messages = [{"role": "user", "content": blocks}] + [
        {"role": "assistant" if i % 2 == 0 else "user", "content": draw(texts)}
        for i in range(turns - 1)
    ]
    body: dict[str, object] = {"model": model}
    limit = draw(st.integers(1, 64_000))
    if api == "anthropic":
        body |= {"messages": messages, "max_tokens": limit}
        if draw(st.booleans()):
            body["system"] = draw(texts)
    elif api == "chat":
        body |= {"messages": messages, "max_completion_tokens": limit}
        if draw(st.booleans()):
            body["n"] = draw(st.integers(1, 4))
    else:
        body |= {"input": messages, "max_output_tokens": limit}
    if draw(st.booleans()):
        body["tools"] = [
            {"name": f"tool_{i}", "description": draw(texts), "input_schema": {"type": "object"}}
            for i in range(draw(st.integers(1, 3)))
        ]
    long_context = api == "anthropic" and draw(st.booleans())
    return api, body, long_context


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests(),
    st.tuples(st.integers(0, 100), st.integers(0, 100), st.integers(0, 100), st.integers(0, 100)),
)
def test_the_hold_covers_the_worst_usage_of_any_request(request, split) -> None:  # type: ignore[no-untyped-def]
    api, body, long_context = request
    provider = "anthropic" if api == "anthropic" else "openai"
    model = str(body["model"])
    raw = json.dumps(body, ensure_ascii=False).encode()
    book = default_price_book()
    held = hold_nano(
        book, provider, model, request_bound(API_NAMES[api], body, len(raw)), AT, None, long_context
    )
    assert held is not None
    # The worst usage, split over plain input, 5-minute and 1-hour writes and cache reads in
    # any proportion.
    window = calc_price(
        Usage(input_tokens=1), model, provider_id=provider, genai_request_timestamp=AT
    ).model.context_window
    assert window is not None
    if long_context:
        window = max(window, LONG_CONTEXT_WINDOW)
    prompt = worst_prompt_tokens(api, body, window)
    weights = [weight + 1 for weight in split]
    parts = [prompt * weight // sum(weights) for weight in weights]
    parts[0] += prompt - sum(parts)
    _plain, write_5m, write_1h, read = parts
    usage = Usage(
        input_tokens=prompt,
        output_tokens=worst_output_tokens(api, body),
        cache_read_tokens=read,
        cache_write_tokens=write_5m + write_1h,
        cache_write_1h_tokens=write_1h,
    )
    worst = calc_price(usage, model, provider_id=provider, genai_request_timestamp=AT)
    assert Decimal(held) / 10**9 >= worst.total_price, (held, worst.total_price, usage)
