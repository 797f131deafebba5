"""A stand-in for Anthropic's usage and cost reports at scale, for bench/provider_reports.py.

Serves /v1/organizations/analytics/usage and /cost with KEYS x MODELS rows per UTC day of
the asked window, generated on the fly (nothing is held), in pages of the asked limit.
Run: python bench/provider_standin.py PORT KEYS MODELS
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PORT, KEYS, MODELS = (int(value) for value in sys.argv[1:4])


def _group(model: int, key: int) -> str:
    return (
        f'"group": {{"model": "claude-bench-{model:02d}", "api_key_id": "apikey_{key:04d}", '
        f'"workspace_id": "wrkspc_{key % 10:02d}"}}'
    )


# The part of each row that does not depend on the day, rendered once per key and model.
USAGE = [
    f'{_group(m, k)}, "usage": {{"uncached_input_tokens": {1000 + k}, "cache_creation": '
    '{"ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 5}, '
    '"cache_read_input_tokens": 200, "output_tokens": 50, "server_tool_use": '
    f'{{"web_search_requests": 0}}, "total_tokens": {1265 + k}, "requests": 3}}}}'
    for k in range(KEYS)
    for m in range(MODELS)
]
COST = [
    f'{_group(m, k)}, "cost": {{"amount": "{k % 7 + 1}.125", "currency": "USD", '
    f'"list_amount": "{k % 7 + 1}.125", "requests": null}}}}'
    for k in range(KEYS)
    for m in range(MODELS)
]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_args: object) -> None:
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        template = USAGE if parts.path.endswith("/usage") else COST
        start = datetime.fromisoformat(query["starting_at"][0])
        end = datetime.fromisoformat(query["ending_at"][0])
        per_day = KEYS * MODELS
        total = (end - start).days * per_day
        offset = int(query.get("page", ["0"])[0] or 0)
        limit = int(query.get("limit", ["20"])[0])
        days = {}
        items = []
        for index in range(offset, min(total, offset + limit)):
            day, rest = divmod(index, per_day)
            bounds = days.get(day)
            if bounds is None:
                begin = start + timedelta(days=day)
                bounds = days[day] = (
                    f'{{"starting_at": "{begin:%Y-%m-%dT%H:%M:%SZ}", '
                    f'"ending_at": "{begin + timedelta(days=1):%Y-%m-%dT%H:%M:%SZ}", '
                )
            items.append(bounds + template[rest])
        more = offset + limit < total
        body = (
            f'{{"data": [{", ".join(items)}], "has_more": {json.dumps(more)}, '
            f'"next_page": {json.dumps(str(offset + limit) if more else None)}}}'
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
