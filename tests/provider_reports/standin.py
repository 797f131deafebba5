"""A local stand-in for the providers' admin report APIs, answering in their documented
shapes (the SDKs' own types, validated strictly by the clients under test).

Anthropic: GET /v1/organizations/analytics/usage and /cost (the admin key, the beta header),
rows filtered by bucket start, cursor pages of `page_rows` rows. OpenAI: GET
/v1/organization/usage/completions and /v1/organization/costs (Bearer admin key), pages of
`page_buckets` daily buckets. `fail` schedules answers: (path suffix, status, headers)
served once each, in order, before the real answer (after `fail_after` good answers of
that path).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from tests.conftest import serving

ADMIN_KEY = "sk-ant-admin01-standin"
OPENAI_ADMIN_KEY = "sk-admin-standin"


def day_bounds(day: str) -> tuple[str, str]:
    start = date.fromisoformat(day)
    return f"{start.isoformat()}T00:00:00Z", f"{(start + timedelta(days=1)).isoformat()}T00:00:00Z"


def usage_item(
    day: str,
    model: str,
    api_key_id: str | None,
    workspace_id: str | None,
    *,
    uncached: int = 0,
    write_5m: int = 0,
    write_1h: int = 0,
    reads: int = 0,
    output: int = 0,
    web_searches: int = 0,
    requests: int = 1,
) -> dict[str, Any]:
    start, end = day_bounds(day)
    return {
        "starting_at": start,
        "ending_at": end,
        "group": {"model": model, "api_key_id": api_key_id, "workspace_id": workspace_id},
        "usage": {
            "uncached_input_tokens": uncached,
            "cache_creation": {
                "ephemeral_5m_input_tokens": write_5m,
                "ephemeral_1h_input_tokens": write_1h,
            },
            "cache_read_input_tokens": reads,
            "output_tokens": output,
            "server_tool_use": {"web_search_requests": web_searches},
            "total_tokens": uncached + write_5m + write_1h + reads + output,
            "requests": requests,
        },
    }


def cost_item(
    day: str, model: str, api_key_id: str | None, workspace_id: str | None, cents: str
) -> dict[str, Any]:
    start, end = day_bounds(day)
    return {
        "starting_at": start,
        "ending_at": end,
        "group": {"model": model, "api_key_id": api_key_id, "workspace_id": workspace_id},
        "cost": {"amount": cents, "currency": "USD", "list_amount": cents, "requests": None},
    }


def _epoch(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp())


def completions_result(
    model: str,
    api_key_id: str | None,
    project_id: str | None,
    *,
    input_tokens: int,
    cached: int = 0,
    writes: int = 0,
    output: int = 0,
    with_uncached: bool = True,
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "object": "organization.usage.completions.result",
        "input_tokens": input_tokens,
        "output_tokens": output,
        "num_model_requests": 1,
        "input_cached_tokens": cached,
        "input_cache_write_tokens": writes,
        "model": model,
        "api_key_id": api_key_id,
        "project_id": project_id,
    }
    if with_uncached:
        result["input_uncached_tokens"] = input_tokens - cached - writes
    return result


def costs_result(line_item: str, project_id: str | None, api_key_id: str | None, value: str) -> str:
    """A cost result as JSON text: the amount stays the decimal text it is on the wire."""
    project = "null" if project_id is None else f'"{project_id}"'
    key = "null" if api_key_id is None else f'"{api_key_id}"'
    return (
        '{"object": "organization.costs.result", "amount": {"value": '
        f'{value}, "currency": "usd"}}, "line_item": "{line_item}", "project_id": {project}, '
        f'"api_key_id": {key}, "quantity": null}}'
    )


@dataclass
class StandIn:
    anthropic_usage: list[dict[str, Any]] = field(default_factory=list)
    anthropic_cost: list[dict[str, Any]] = field(default_factory=list)
    # {day: [result, ...]} and {day: [json text of a result, ...]}
    openai_usage: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    openai_costs: dict[str, list[str]] = field(default_factory=dict)
    page_rows: int = 2
    page_buckets: int = 1
    fail: list[tuple[str, int, dict[str, str]]] = field(default_factory=list)
    # The failures of `fail` are served only after this many good answers of their path.
    fail_after: int = 0
    # (monotonic time, path, status) of every request
    requests: list[tuple[float, str, int]] = field(default_factory=list)
    url: str = ""

    def app(self) -> FastAPI:
        app = FastAPI()

        def scheduled(path: str) -> Response | None:
            for index, (suffix, status, headers) in enumerate(self.fail):
                answered = sum(
                    1 for _at, seen, code in self.requests if seen == path and code == 200
                )
                if path.endswith(suffix) and answered >= self.fail_after:
                    del self.fail[index]
                    self.requests.append((time.monotonic(), path, status))
                    body = {
                        "type": "error",
                        "error": {"type": "rate_limit_error", "message": "slow down"},
                    }
                    return JSONResponse(body, status_code=status, headers=headers)
            self.requests.append((time.monotonic(), path, 200))
            return None

        def anthropic_page(request: Request, items: list[dict[str, Any]]) -> Response:
            # anthropic 2.14 sends the key as a bearer token (older SDKs: x-api-key).
            given = request.headers.get("authorization", "").removeprefix("Bearer ")
            if ADMIN_KEY not in (given, request.headers.get("x-api-key")):
                return JSONResponse(
                    {
                        "type": "error",
                        "error": {"type": "authentication_error", "message": "invalid x-api-key"},
                    },
                    status_code=401,
                )
            if "analytics-usage-cost-2026-08-24" not in request.headers.get("anthropic-beta", ""):
                return JSONResponse(
                    {
                        "type": "error",
                        "error": {"type": "invalid_request_error", "message": "beta header"},
                    },
                    status_code=400,
                )
            query = request.query_params
            groups = set(query.getlist("group_by[]"))
            assert groups == {"model", "api_key_id", "workspace_id"}, groups
            assert query["time_bucket_width"] == "1d"
            start = datetime.fromisoformat(query["starting_at"])
            end = datetime.fromisoformat(query["ending_at"])
            assert end - start <= timedelta(days=31)
            chosen = [
                item for item in items if start <= datetime.fromisoformat(item["starting_at"]) < end
            ]
            offset = int(query.get("page") or 0)
            size = min(int(query.get("limit", 20)), self.page_rows)
            page = chosen[offset : offset + size]
            more = offset + size < len(chosen)
            return JSONResponse(
                {
                    "data": page,
                    "has_more": more,
                    "next_page": str(offset + size) if more else None,
                    "data_refreshed_at": "2026-11-18T11:00:00Z",
                }
            )

        @app.get("/v1/organizations/analytics/usage")
        def anthropic_usage(request: Request) -> Response:
            return scheduled(request.url.path) or anthropic_page(request, self.anthropic_usage)

        @app.get("/v1/organizations/analytics/cost")
        def anthropic_cost(request: Request) -> Response:
            return scheduled(request.url.path) or anthropic_page(request, self.anthropic_cost)

        def openai_days(request: Request, source: dict[str, Any]) -> tuple[list[str], int, bool]:
            assert request.headers.get("authorization") == f"Bearer {OPENAI_ADMIN_KEY}"
            query = request.query_params
            start, end = int(query["start_time"]), int(query["end_time"])
            days = []
            moment = start
            while moment < end:
                days.append(datetime.fromtimestamp(moment, UTC).date().isoformat())
                moment += 86_400
            offset = int(query.get("page") or 0)
            size = min(int(query.get("limit", 7)), self.page_buckets)
            return days[offset : offset + size], offset + size, offset + size < len(days)

        def bucket_text(day: str, results: list[str]) -> str:
            end = _epoch(day) + 86_400
            return (
                f'{{"object": "bucket", "start_time": {_epoch(day)}, "end_time": {end}, '
                f'"results": [{", ".join(results)}]}}'
            )

        def page_text(buckets: list[str], next_offset: int, more: bool) -> Response:
            cursor = f'"{next_offset}"' if more else "null"
            body = (
                f'{{"object": "page", "data": [{", ".join(buckets)}], '
                f'"has_more": {"true" if more else "false"}, "next_page": {cursor}}}'
            )
            return Response(body, media_type="application/json")

        @app.get("/v1/organization/usage/completions")
        def openai_completions(request: Request) -> Response:
            failed = scheduled(request.url.path)
            if failed:
                return failed
            days, next_offset, more = openai_days(request, self.openai_usage)
            import json

            buckets = [
                bucket_text(day, [json.dumps(r) for r in self.openai_usage.get(day, [])])
                for day in days
            ]
            return page_text(buckets, next_offset, more)

        @app.get("/v1/organization/costs")
        def openai_costs(request: Request) -> Response:
            failed = scheduled(request.url.path)
            if failed:
                return failed
            days, next_offset, more = openai_days(request, self.openai_costs)
            buckets = [bucket_text(day, self.openai_costs.get(day, [])) for day in days]
            return page_text(buckets, next_offset, more)

        return app

    @contextmanager
    def running(self) -> Iterator[StandIn]:
        with serving(self.app()) as url:
            self.url = url
            yield self
