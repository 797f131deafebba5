"""An application instrumented with logfire, run by test_otlp_instrumentations.py in its own
process (logfire configures OpenTelemetry for the whole process): one Anthropic call and
two OpenAI calls to the stand-in provider, the spans exported to tokenledger by the real
OTLP/HTTP exporter.

Usage: logfire_app.py PROVIDER_URL TRACES_ENDPOINT INGEST_KEY
"""

from __future__ import annotations

import sys

import anthropic
import logfire
import openai
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def main(provider_url: str, endpoint: str, key: str) -> None:
    exporter = OTLPSpanExporter(
        endpoint=endpoint,
        headers={"Authorization": f"Bearer {key}"},
        compression=Compression.Gzip,
    )
    logfire.configure(
        send_to_logfire=False,
        console=False,
        service_name="logfire-app",
        additional_span_processors=[BatchSpanProcessor(exporter)],
    )
    logfire.instrument_anthropic()
    logfire.instrument_openai()
    claude = anthropic.Anthropic(api_key="sk-ant-test", base_url=provider_url)
    claude.messages.create(
        model="claude-sonnet-4-6", max_tokens=64, messages=[{"role": "user", "content": "?"}]
    )
    gpt = openai.OpenAI(api_key="sk-test", base_url=f"{provider_url}/v1")
    gpt.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "?"}])
    gpt.responses.create(model="gpt-4.1", input="Fine?")
    logfire.force_flush()
    logfire.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
