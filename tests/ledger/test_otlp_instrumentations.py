"""The OpenTelemetry instrumentations the README recommends, for real: each installed
package (pinned in the dev extras) around the real provider SDK (anthropic, openai), which
calls a local stand-in of the provider (standin_providers.py), and the spans exported by
the real OTLP/HTTP exporter (protobuf, gzip) to the app under uvicorn; the stored cost is
compared with a hand-priced figure.

The spans' times are the instrumentations' own (the clock of this machine); the served
app reads the same clock, so that they fall inside its window, and no figure depends on
the date (every price used here has been in force since before 2026-03-13).

Rates (USD per million tokens): claude-sonnet-4-6 3 in, 15 out, 0.30 cache read, 3.75
5-minute write, 6 1-hour write; gpt-4o-2024-08-06 2.50 in, 1.25 cached, 10 out;
gpt-4.1-2025-04-14 2 in, 0.50 cached, 8 out.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from tests.conftest import Tenant, serving
from tests.ledger.conftest import LICENSE, stored_events
from tests.ledger.standin_providers import CLAUDE, GPT_CHAT, GPT_RESPONSES, standin_providers
from tokenledger.app import create_app
from tokenledger.config import Settings
from tokenledger.db import Database

pytestmark = [
    # What is under test is how spans are read; the write path under them is the one
    # test_otlp.py proves on both databases. SQLite only, to keep the suite short.
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
    # OpenLLMetry's openai package declares a pydantic model the pydantic 1 way.
    pytest.mark.filterwarnings(
        "ignore:Support for class-based `config` is deprecated:DeprecationWarning"
    ),
]

# The Anthropic call: 1,000 uncached input, 500 output, 10,000 cache reads, 3,000 writes.
# 1000*3 + 500*15 + 10000*0.30 + 1000*3.75 + 2000*6 = 29,250 micro-USD with the split;
CLAUDE_EXACT = 29_250_000
# 24,750 micro-USD when a package reports the writes without it (all priced as 5-minute).
CLAUDE_NO_SPLIT = 1000 * 3000 + 500 * 15_000 + 10_000 * 300 + 3000 * 3750
# Chat Completions: 976*2.50 + 1024*1.25 + 300*10 = 6,720 micro-USD
CHAT_EXACT = 6_720_000
# Responses: 976*2 + 1024*0.50 + 300*8 = 4,864 micro-USD
RESPONSES_EXACT = 4_864_000


@pytest.fixture
def tenant(make_tenant: Callable[..., Tenant]) -> Tenant:
    return make_tenant(LICENSE)


@pytest.fixture
def served(settings: Settings) -> Iterator[str]:
    with serving(create_app(settings)) as url:
        yield url


@pytest.fixture
def provider_url() -> Iterator[str]:
    with standin_providers() as url:
        yield url


@pytest.fixture
def tracing(served: str, tenant: Tenant) -> Iterator[TracerProvider]:
    """A tracer provider whose spans go, in batches, to the app by the real exporter."""
    exporter = OTLPSpanExporter(
        endpoint=f"{served}/v1/traces",
        headers={"Authorization": f"Bearer {tenant.key}"},
        compression=Compression.Gzip,
    )
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    yield provider
    provider.shutdown()


def by_model(database: Database, tenant: Tenant) -> dict[str, list[tuple[str, int | None]]]:
    """The stored events: (id, cost in nano-USD) by model."""
    found: dict[str, list[tuple[str, int | None]]] = {}
    for event in stored_events(database, tenant.org_id).values():
        found.setdefault(event.model, []).append((event.external_id, event.cost_nano))
    return found


def claude(
    base_url: str,
    tracer_provider: TracerProvider | None,
    stream: bool = False,
    closing: bool = True,
) -> None:
    """One Messages call; with a tracer provider, the Anthropic SDK's own tracing is on.
    Streamed, the stream is read in a with block (closing), or just iterated to its end."""
    client = anthropic.Anthropic(
        api_key="sk-ant-test",
        base_url=base_url,
        open_telemetry={"tracer_provider": tracer_provider} if tracer_provider else False,
    )
    messages: Any = [{"role": "user", "content": "Fine?"}]
    if stream and closing:
        with client.messages.create(
            model=CLAUDE, max_tokens=64, messages=messages, stream=True
        ) as events:
            for _ in events:
                pass
    elif stream:
        for _ in client.messages.create(
            model=CLAUDE, max_tokens=64, messages=messages, stream=True
        ):
            pass
    else:
        client.messages.create(model=CLAUDE, max_tokens=64, messages=messages)
    client.close()


def gpt(base_url: str, stream: bool = False) -> None:
    """One Chat Completions call and one Responses call (streamed: one Chat Completions
    stream with its usage asked for)."""
    client = openai.OpenAI(api_key="sk-test", base_url=f"{base_url}/v1")
    messages: Any = [{"role": "user", "content": "?"}]
    if stream:
        with client.chat.completions.create(
            model="gpt-4o", messages=messages, stream=True, stream_options={"include_usage": True}
        ) as chunks:
            for _ in chunks:
                pass
    else:
        client.chat.completions.create(model="gpt-4o", messages=messages)
        client.responses.create(model="gpt-4.1", input="Fine?")
    client.close()


def instrumented(module: str, name: str, provider: TracerProvider) -> Any:
    instrumentor = getattr(importlib.import_module(module), name)()
    instrumentor.instrument(tracer_provider=provider)
    return instrumentor


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_the_anthropic_sdks_own_tracing_is_exact(
    database: Database, tenant: Tenant, provider_url: str, tracing: TracerProvider, stream: bool
) -> None:
    claude(provider_url, tracing, stream)
    tracing.force_flush()
    ((event_id, cost),) = by_model(database, tenant)[CLAUDE]
    assert event_id.startswith("msg_01StandIn")  # the response id, as the gateway's
    assert cost == CLAUDE_EXACT


ANTHROPIC_INSTRUMENTATIONS = {
    "opentelemetry-instrumentation-genai-anthropic": (
        "opentelemetry.instrumentation.genai.anthropic",
        "AnthropicInstrumentor",
    ),
    "OpenLLMetry opentelemetry-instrumentation-anthropic": (
        "opentelemetry.instrumentation.anthropic",
        "AnthropicInstrumentor",
    ),
    "openinference-instrumentation-anthropic": (
        "openinference.instrumentation.anthropic",
        "AnthropicInstrumentor",
    ),
}


@pytest.mark.parametrize("package", sorted(ANTHROPIC_INSTRUMENTATIONS))
def test_anthropic_instrumentations(
    database: Database,
    tenant: Tenant,
    provider_url: str,
    tracing: TracerProvider,
    package: str,
) -> None:
    instrumentor = instrumented(*ANTHROPIC_INSTRUMENTATIONS[package], tracing)
    try:
        # Alone (the SDK's own tracing off): none of them reports the 5-minute / 1-hour
        # split, so the 1-hour writes are priced as 5-minute ones.
        claude(provider_url, None)
        tracing.force_flush()
        ((alone, cost),) = by_model(database, tenant)[CLAUDE]
        assert cost == CLAUDE_NO_SPLIT
        # Beside the SDK's own tracing (its default whenever a tracer provider is set):
        # two spans of one call, counted once, with the SDK's split: exact.
        claude(provider_url, tracing)
        tracing.force_flush()
    finally:
        instrumentor.uninstrument()
    calls = dict(by_model(database, tenant)[CLAUDE])
    assert len(calls) == 2, calls
    del calls[alone]
    ((event_id, cost),) = calls.items()
    assert event_id.startswith("msg_01StandIn")
    assert cost == CLAUDE_EXACT


OPENAI_INSTRUMENTATIONS = {
    "opentelemetry-instrumentation-genai-openai": (
        "opentelemetry.instrumentation.genai.openai",
        "OpenAIInstrumentor",
    ),
    "OpenLLMetry opentelemetry-instrumentation-openai": (
        "opentelemetry.instrumentation.openai",
        "OpenAIInstrumentor",
    ),
    "openinference-instrumentation-openai": (
        "openinference.instrumentation.openai",
        "OpenAIInstrumentor",
    ),
}


@pytest.mark.parametrize("package", sorted(OPENAI_INSTRUMENTATIONS))
def test_openai_instrumentations_are_exact_for_chat_completions_and_responses(
    database: Database,
    tenant: Tenant,
    provider_url: str,
    tracing: TracerProvider,
    package: str,
) -> None:
    instrumentor = instrumented(*OPENAI_INSTRUMENTATIONS[package], tracing)
    try:
        gpt(provider_url)
        tracing.force_flush()
    finally:
        instrumentor.uninstrument()
    stored = by_model(database, tenant)
    assert set(stored) == {GPT_CHAT, GPT_RESPONSES}
    ((_, chat),) = stored[GPT_CHAT]
    ((_, responses),) = stored[GPT_RESPONSES]
    assert (chat, responses) == (CHAT_EXACT, RESPONSES_EXACT)


LOGFIRE_APP = Path(__file__).with_name("logfire_app.py")


def test_logfire_is_exact(
    database: Database, tenant: Tenant, provider_url: str, served: str, tmp_path: Path
) -> None:
    # logfire configures OpenTelemetry for the whole process: its own process here.
    env = {**os.environ, "LOGFIRE_SEND_TO_LOGFIRE": "false", "LOGFIRE_CONSOLE": "false"}
    done = subprocess.run(
        [sys.executable, str(LOGFIRE_APP), provider_url, f"{served}/v1/traces", tenant.key],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    stored = by_model(database, tenant)
    # logfire's span and the Anthropic SDK's own (on by default) for one call: counted once,
    # and logfire's copy of the provider's usage object carries the split too.
    ((event_id, cost),) = stored[CLAUDE]
    assert event_id.startswith("msg_01StandIn")
    assert cost == CLAUDE_EXACT
    ((_, chat),) = stored[GPT_CHAT]
    ((_, responses),) = stored[GPT_RESPONSES]
    assert (chat, responses) == (CHAT_EXACT, RESPONSES_EXACT)


# What each package alone records of a streamed call. OpenLLMetry adds the placeholder
# output token of message_start to the final count: 501 output tokens, 15 micro-USD over.
STREAMED_ALONE = {
    "opentelemetry-instrumentation-genai-anthropic": CLAUDE_NO_SPLIT,
    "OpenLLMetry opentelemetry-instrumentation-anthropic": CLAUDE_NO_SPLIT + 15_000,
    "openinference-instrumentation-anthropic": CLAUDE_NO_SPLIT,
}


@pytest.mark.parametrize("package", sorted(ANTHROPIC_INSTRUMENTATIONS))
def test_anthropic_instrumentations_on_streams(
    database: Database,
    tenant: Tenant,
    provider_url: str,
    tracing: TracerProvider,
    package: str,
) -> None:
    instrumentor = instrumented(*ANTHROPIC_INSTRUMENTATIONS[package], tracing)
    try:
        claude(provider_url, None, stream=True, closing=False)
        tracing.force_flush()
        ((alone, cost),) = by_model(database, tenant)[CLAUDE]
        assert cost == STREAMED_ALONE[package]
        # beside the SDK's own tracing: counted once, exact
        claude(provider_url, tracing, stream=True)
        tracing.force_flush()
    finally:
        instrumentor.uninstrument()
    calls = dict(by_model(database, tenant)[CLAUDE])
    assert len(calls) == 2, calls
    del calls[alone]
    assert list(calls.values()) == [CLAUDE_EXACT]


def test_openllmetry_misses_a_stream_read_in_a_with_block_which_the_sdk_still_reports(
    database: Database, tenant: Tenant, provider_url: str, tracing: TracerProvider
) -> None:
    module, name = ANTHROPIC_INSTRUMENTATIONS["OpenLLMetry opentelemetry-instrumentation-anthropic"]
    instrumentor = instrumented(module, name, tracing)
    try:
        claude(provider_url, None, stream=True)
        tracing.force_flush()
        assert CLAUDE not in by_model(database, tenant)  # no span at all: $0
        claude(provider_url, tracing, stream=True)
        tracing.force_flush()
    finally:
        instrumentor.uninstrument()
    ((_, cost),) = by_model(database, tenant)[CLAUDE]
    assert cost == CLAUDE_EXACT


@pytest.mark.parametrize("package", sorted(OPENAI_INSTRUMENTATIONS))
def test_openai_instrumentations_on_chat_completions_streams(
    database: Database,
    tenant: Tenant,
    provider_url: str,
    tracing: TracerProvider,
    package: str,
) -> None:
    instrumentor = instrumented(*OPENAI_INSTRUMENTATIONS[package], tracing)
    try:
        gpt(provider_url, stream=True)
        tracing.force_flush()
    finally:
        instrumentor.uninstrument()
    ((_, chat),) = by_model(database, tenant)[GPT_CHAT]
    assert chat == CHAT_EXACT
