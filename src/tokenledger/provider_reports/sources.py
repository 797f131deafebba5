"""Reading the providers' admin reports through their official SDKs, page by page.

Anthropic (anthropic 2.14): `client.beta.organization.analytics.usage` and `.cost`
(`/v1/organizations/analytics/usage` and `/cost`). The SDK also has `usage_report` and
`cost_report` there, but those are the legacy Claude Enterprise reports: they cannot group
by API key or workspace and keep only the top 100 groups of a bucket; the SDK's own
docstring sends new integrations to `usage` / `cost`, which return every combination.
OpenAI (openai 3.57): `client.admin.organization.usage.completions` and `.costs`
(`/v1/organization/usage/completions` and `/v1/organization/costs`). Their pages are single
responses (`next_page`), followed here.

Both SDKs retry 408, 409, 429 and 5xx answers themselves, waiting what `retry-after`
(or `retry-after-ms`) says, else with exponential backoff; `max_retries` sets how often.

Each reader yields plain rows, a window's usage and cost rows merged by day; nothing holds
more than one page of each report.
"""

from __future__ import annotations

import heapq
import json
import threading
from collections.abc import Callable, Generator, Iterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from queue import Full, Queue
from typing import Any

from pydantic_core import from_json

from tokenledger.money import NANO_PER_USD

# A request may span at most 31 days on both providers.
WINDOW_DAYS = 31
ANTHROPIC_PAGE_ROWS = 1000  # the API's maximum rows per page
OPENAI_PAGE_BUCKETS = 31  # the maximum daily buckets per page (completions; costs take 180)
NANO_PER_CENT = NANO_PER_USD // 100
# Pages of one report read ahead, by a thread, while the sync works on the current one.
PAGES_AHEAD = 2


# A row: (day, model, api_key_id, workspace_id) and its figures in the order of FIGURES.
# Plain tuples: a month of 1,000 keys is 1,240,000 of them.
RowKey = tuple[str, str, str, str]
FIGURES = (
    "uncached_input_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "cache_read_tokens",
    "output_tokens",
    "web_search_requests",
    "requests",
    "cost_nano",
)
ReportRow = tuple[RowKey, tuple[int, int, int, int, int, int, int, int]]


def cents_to_nano(amount: str) -> int:
    """Anthropic's amounts: decimal text of (fractional) cents; rounded half to even to a
    nano-dollar (a hundredth of a micro-cent), the ledger's unit."""
    return int((Decimal(amount) * NANO_PER_CENT).to_integral_value(ROUND_HALF_EVEN))


def dollars_to_nano(amount: Decimal) -> int:
    return int((amount * NANO_PER_USD).to_integral_value(ROUND_HALF_EVEN))


def _utc_day(instant: str) -> str:
    """The UTC day of an RFC 3339 instant (the reports give UTC: read without parsing)."""
    if instant.endswith(("Z", "+00:00")):
        return instant[:10]
    return datetime.fromisoformat(instant).astimezone(UTC).date().isoformat()


def windows(first: date, last: date) -> Iterator[tuple[datetime, datetime]]:
    """[start, end) instants of at most WINDOW_DAYS whole UTC days from first to last."""
    day = first
    while day <= last:
        end = min(last, day + timedelta(days=WINDOW_DAYS - 1)) + timedelta(days=1)
        yield datetime.combine(day, time(), UTC), datetime.combine(end, time(), UTC)
        day = end


def _pages(
    fetch: Callable[..., Any], client: Any, *, decimals: bool = False, **query: Any
) -> Generator[dict[str, Any]]:
    """The JSON of every page of one report (the SDK requests, authenticates and retries;
    next_page is followed here), the next page fetched while this one is read.

    The SDK's own models cost about a millisecond a row to build (its lenient construct
    path): 1,240,000 rows of a month of 1,000 keys would take 20 minutes. So each page's
    JSON is read as it came; a client made with strict validation (the tests) also has
    every page checked against the SDK's types. Pages whose figures are integers and text
    are read by pydantic's JSON parser (a third of the time of json.loads); with `decimals`
    (OpenAI's costs: dollars as JSON numbers) every fractional number becomes a Decimal.
    """
    check = bool(getattr(client, "_strict_response_validation", False))

    def pages() -> Iterator[dict[str, Any]]:
        page: str | None = None
        while True:
            raw = fetch(**query, **({"page": page} if page else {}))
            if check:
                raw.parse()
            content = raw.http_response.content
            body: dict[str, Any] = (
                json.loads(content, parse_float=Decimal) if decimals else from_json(content)
            )
            yield body
            page = body.get("next_page")
            if body.get("has_more") is False or not page:
                return

    return _ahead(pages())


_DONE = object()


def _ahead(source: Iterator[Any], depth: int = PAGES_AHEAD) -> Generator[Any]:
    """The items of `source`, produced by a thread of their own up to `depth` ahead of the
    reader: the next page is on its way while this one is read (the wait for the provider
    overlaps the work). An error in the thread is raised here; a reader that stops early
    stops the thread."""
    queue: Queue[Any] = Queue(maxsize=depth)
    stop = threading.Event()

    def offer(value: tuple[Any, BaseException | None]) -> bool:
        """Put value in the queue once there is room; False if the reader stopped."""
        while not stop.is_set():
            try:
                queue.put(value, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in source:
                if not offer((item, None)):
                    return
        except BaseException as exc:  # handed to the reader
            offer((_DONE, exc))
            return
        offer((_DONE, None))

    thread = threading.Thread(target=produce, name="provider-report-pages", daemon=True)
    thread.start()
    try:
        while True:
            item, error = queue.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        thread.join()


def _by_day(
    *reports: tuple[Callable[[Iterator[dict[str, Any]]], Iterator[ReportRow]], Generator[Any]],
) -> Iterator[ReportRow]:
    """The rows of several reports of one window (a reader of rows, its pages), merged by
    day.

    Each report lists its days in order, so one day's usage rows and cost rows come out
    together and meet in memory (the sync writes a key once, not an insert then an update
    of the same row). Were a report out of order, every row still comes out once. Closed
    (a failure, a reader that stops), it stops every report's page thread before it returns.
    """
    try:
        yield from heapq.merge(*(read(pages) for read, pages in reports), key=_row_day)
    finally:
        for _read, pages in reports:
            pages.close()


def _row_day(row: ReportRow) -> str:
    return row[0][0]


def anthropic_rows(client: Any, first: date, last: date) -> Generator[ReportRow]:
    """Usage and cost rows of every UTC day from first to last (Anthropic), by day."""
    analytics = client.beta.organization.analytics
    for start, end in windows(first, last):
        common: dict[str, Any] = {
            "starting_at": start,
            "ending_at": end,
            "time_bucket_width": "1d",
            "group_by": ["model", "api_key_id", "workspace_id"],
            "limit": ANTHROPIC_PAGE_ROWS,
        }
        yield from _by_day(
            (_anthropic_usage, _pages(analytics.usage.with_raw_response.list, client, **common)),
            (_anthropic_cost, _pages(analytics.cost.with_raw_response.list, client, **common)),
        )


def _anthropic_key(day: str, group: dict[str, Any]) -> tuple[str, str, str, str]:
    """A row's day, model, API key and workspace: the same in both reports."""
    return (
        day,
        group.get("model") or "",
        group.get("api_key_id") or "",
        group.get("workspace_id") or "",
    )


def _anthropic_usage(pages: Iterator[dict[str, Any]]) -> Iterator[ReportRow]:
    days: dict[str, str] = {}
    for body in pages:
        for item in body["data"]:
            group, usage = item["group"], item["usage"]
            writes = usage["cache_creation"]
            start = item["starting_at"]
            day = days.get(start) or days.setdefault(start, _utc_day(start))
            yield (
                _anthropic_key(day, group),
                (
                    usage["uncached_input_tokens"],
                    writes["ephemeral_5m_input_tokens"],
                    writes["ephemeral_1h_input_tokens"],
                    usage["cache_read_input_tokens"],
                    usage["output_tokens"],
                    usage["server_tool_use"]["web_search_requests"],
                    usage.get("requests") or 0,
                    0,
                ),
            )


def _anthropic_cost(pages: Iterator[dict[str, Any]]) -> Iterator[ReportRow]:
    days: dict[str, str] = {}
    for body in pages:
        for item in body["data"]:
            group, cost = item["group"], item["cost"]
            if cost["currency"] != "USD":
                raise ValueError(f"cost in {cost['currency']}, not USD")
            start = item["starting_at"]
            day = days.get(start) or days.setdefault(start, _utc_day(start))
            yield (
                _anthropic_key(day, group),
                (0, 0, 0, 0, 0, 0, 0, cents_to_nano(cost["amount"])),
            )


def line_item_model(line_item: str | None) -> str:
    """The model of an OpenAI cost line item ("gpt-4o-2024-08-06, input" -> the model)."""
    if not line_item:
        return ""
    model, separator, _kind = line_item.rpartition(", ")
    return model if separator else line_item


def openai_rows(client: Any, first: date, last: date) -> Generator[ReportRow]:
    """Completions usage and cost rows of every UTC day from first to last, by day."""
    usage = client.admin.organization.usage.with_raw_response
    for start, end in windows(first, last):
        span: dict[str, Any] = {
            "start_time": int(start.timestamp()),
            "end_time": int(end.timestamp()),
        }
        completions = _pages(
            usage.completions,
            client,
            **span,
            bucket_width="1d",
            group_by=["model", "api_key_id", "project_id"],
            limit=OPENAI_PAGE_BUCKETS,
        )
        # The SDK's type holds a cost as a binary float: the JSON is read with decimals.
        costs = _pages(
            usage.costs,
            client,
            decimals=True,
            **span,
            bucket_width="1d",
            group_by=["line_item", "project_id", "api_key_id"],
            limit=WINDOW_DAYS,
        )
        yield from _by_day((_openai_usage, completions), (_openai_costs, costs))


def _openai_usage(pages: Iterator[dict[str, Any]]) -> Iterator[ReportRow]:
    for body in pages:
        for bucket in body["data"]:
            day = datetime.fromtimestamp(bucket["start_time"], UTC).date().isoformat()
            for result in bucket["results"]:
                if result.get("object") != "organization.usage.completions.result":
                    continue
                cached = result.get("input_cached_tokens") or 0
                writes = result.get("input_cache_write_tokens") or 0
                uncached = result.get("input_uncached_tokens")
                if uncached is None:  # older answers: input_tokens includes both
                    uncached = result["input_tokens"] - cached - writes
                key = (
                    day,
                    result.get("model") or "",
                    result.get("api_key_id") or "",
                    result.get("project_id") or "",
                )
                # OpenAI's writes (30 minutes and 12 hours) under one kind (5m): the
                # ledger keeps no lifetime split for OpenAI either.
                yield (
                    key,
                    (
                        uncached,
                        writes,
                        0,
                        cached,
                        result["output_tokens"],
                        0,
                        result["num_model_requests"],
                        0,
                    ),
                )


def _openai_costs(pages: Iterator[dict[str, Any]]) -> Iterator[ReportRow]:
    for body in pages:
        for bucket in body["data"]:
            day = datetime.fromtimestamp(bucket["start_time"], UTC).date().isoformat()
            for result in bucket["results"]:
                if result.get("object") != "organization.costs.result":
                    continue
                amount = result.get("amount") or {}
                currency = (amount.get("currency") or "usd").lower()
                if currency != "usd":
                    raise ValueError(f"cost in {currency}, not USD")
                key = (
                    day,
                    line_item_model(result.get("line_item")),
                    result.get("api_key_id") or "",
                    result.get("project_id") or "",
                )
                cost_nano = dollars_to_nano(Decimal(amount.get("value") or 0))
                yield key, (0, 0, 0, 0, 0, 0, 0, cost_nano)
