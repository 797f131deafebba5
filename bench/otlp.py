"""`make bench-otlp`: one large OTLP export with refused spans, beside another tenant's usage.

On a fresh SQLite ledger served by `tokenledger serve` (one worker): 50 spans are stored,
then one export of 10,000 spans of which 50 reuse those span ids with other content, while
another organization posts one-event batches to POST /api/v1/usage in a loop. Figures: the
export's time, what it answered, and the other tenant's latencies meanwhile (the longest
is how long the export held the writer at most). Issue 15 measured 36.7 s of writer hold
and 500s for the other tenants before the fix. Bounded: one export, and the loop stops
with it (60 s at most).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from ingest import HERE, ledger_server, percentiles, prepare_ledger

SPANS = 10_000
REUSED = 50
END = int(datetime.now(UTC).timestamp()) * 10**9


def export(span_numbers: list[int], organization: str, input_tokens: int) -> bytes:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.append(
        KeyValue(key="tokenledger.organization", value=AnyValue(string_value=organization))
    )
    spans = resource_spans.scope_spans.add().spans
    for number in span_numbers:
        span = spans.add()
        span.trace_id = bytes.fromhex("5b8efff798038103d269b633813fc60c")
        span.span_id = number.to_bytes(8, "big")
        span.name = "chat gpt-4o"
        span.start_time_unix_nano = END - 10**9
        span.end_time_unix_nano = END
        for key, value in (
            ("gen_ai.request.model", "gpt-4o"),
            ("gen_ai.usage.input_tokens", input_tokens),
            ("gen_ai.usage.output_tokens", 300),
            ("gen_ai.usage.cache_read.input_tokens", 1024),
        ):
            any_value = (
                AnyValue(int_value=value) if isinstance(value, int) else AnyValue(string_value=value)
            )
            span.attributes.append(KeyValue(key=key, value=any_value))
    return request.SerializeToString()


def main() -> int:
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'otlp.db'}"
        ledger = prepare_ledger(url)
        with ledger_server(url) as server:
            headers = {
                "Authorization": f"Bearer {ledger.key}",
                "Content-Type": "application/x-protobuf",
            }
            reused = list(range(1, SPANS + 1, SPANS // REUSED))
            with httpx.Client(base_url=server.base, timeout=120) as client:
                first = client.post("/v1/traces", content=export(reused, "o0001", 2000),
                                    headers=headers)
                first.raise_for_status()
                body = export(reused, "o0001", 2001) + export(
                    [n for n in range(1, SPANS + 1) if n not in set(reused)], "o0001", 2000
                )
                latencies: list[float] = []
                failures: list[int] = []
                stop = threading.Event()

                def other_tenant() -> None:
                    usage = {"Authorization": f"Bearer {ledger.key}"}
                    deadline = time.monotonic() + 60
                    with httpx.Client(base_url=server.base, timeout=60) as other:
                        n = 0
                        while not stop.is_set() and time.monotonic() < deadline:
                            n += 1
                            event = {"id": f"other-{n}", "organization": "o0002",
                                     "model": "gpt-4o", "input_tokens": 10, "output_tokens": 5}
                            start = time.perf_counter()
                            answer = other.post("/api/v1/usage", json={"events": [event]},
                                                headers=usage)
                            latencies.append(time.perf_counter() - start)
                            if answer.status_code != 200:
                                failures.append(answer.status_code)

                thread = threading.Thread(target=other_tenant)
                thread.start()
                time.sleep(0.5)
                start = time.perf_counter()
                answer = client.post("/v1/traces", content=body, headers=headers)
                seconds = time.perf_counter() - start
                time.sleep(0.5)
                stop.set()
                thread.join()
    answer.raise_for_status()
    partial = ExportTraceServiceResponse.FromString(answer.content).partial_success
    p50, p99 = percentiles(latencies)
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_at_start": [round(x, 2) for x in load],
        "spans": SPANS,
        "reused_span_ids": REUSED,
        "export_seconds": round(seconds, 3),
        "rejected_spans": partial.rejected_spans,
        "other_tenant_requests": len(latencies),
        "other_tenant_failures": failures,
        "other_tenant_p50_ms": round(p50, 1),
        "other_tenant_p99_ms": round(p99, 1),
        "other_tenant_max_ms": round(max(latencies) * 1000, 1),
    }
    print(json.dumps(report, indent=2))
    out = HERE / "results" / f"{datetime.now(UTC).date().isoformat()}-otlp.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
