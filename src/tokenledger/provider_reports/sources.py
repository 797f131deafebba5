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

Each reader yields plain rows; nothing holds more than one page.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from tokenledger.money import NANO_PER_USD

# A request may span at most 31 days on both providers.
WINDOW_DAYS = 31
ANTHROPIC_PAGE_ROWS = 1000  # the API's maximum rows per page
OPENAI_PAGE_BUCKETS = 31  # the maximum daily buckets per page (completions; costs take 180)
NANO_PER_CENT = NANO_PER_USD // 100


@dataclass(slots=True)
class ReportRow:
    """One provider row: a UTC day, model and account, with tokens or a cost (or both)."""

    day: str
    model: str
    api_key_id: str
    workspace_id: str
    uncached_input_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cache_read_tokens: int = 0
    output_tokens: int = 0
    web_search_requests: int = 0
    requests: int = 0
    cost_nano: int = 0


def cents_to_nano(amount: str) -> int:
    """Anthropic's amounts: decimal text of (fractional) cents; rounded half to even to a
    nano-dollar (a hundredth of a micro-cent), the ledger's unit."""
    return int((Decimal(amount) * NANO_PER_CENT).to_integral_value(ROUND_HALF_EVEN))


def dollars_to_nano(amount: Decimal) -> int:
    return int((amount * NANO_PER_USD).to_integral_value(ROUND_HALF_EVEN))


def windows(first: date, last: date) -> Iterator[tuple[datetime, datetime]]:
    """[start, end) instants of at most WINDOW_DAYS whole UTC days from first to last."""
    day = first
    while day <= last:
        end = min(last, day + timedelta(days=WINDOW_DAYS - 1)) + timedelta(days=1)
        yield datetime.combine(day, time(), UTC), datetime.combine(end, time(), UTC)
        day = end


def _day(value: datetime) -> str:
    return value.astimezone(UTC).date().isoformat()


def anthropic_rows(client: Any, first: date, last: date) -> Iterator[ReportRow]:
    """Usage rows, then cost rows, of every UTC day from first to last (Anthropic)."""
    analytics = client.beta.organization.analytics
    group_by = ["model", "api_key_id", "workspace_id"]
    for start, end in windows(first, last):
        common: dict[str, Any] = {
            "starting_at": start,
            "ending_at": end,
            "time_bucket_width": "1d",
            "group_by": group_by,
            "limit": ANTHROPIC_PAGE_ROWS,
        }
        # Iterating the SDK's page follows next_page, one page in memory at a time.
        for item in analytics.usage.list(**common):
            usage = item.usage
            yield ReportRow(
                day=_day(item.starting_at),
                model=item.group.model or "",
                api_key_id=item.group.api_key_id or "",
                workspace_id=item.group.workspace_id or "",
                uncached_input_tokens=usage.uncached_input_tokens,
                cache_write_5m_tokens=usage.cache_creation.ephemeral_5m_input_tokens,
                cache_write_1h_tokens=usage.cache_creation.ephemeral_1h_input_tokens,
                cache_read_tokens=usage.cache_read_input_tokens,
                output_tokens=usage.output_tokens,
                web_search_requests=usage.server_tool_use.web_search_requests,
                requests=usage.requests or 0,
            )
        for item in analytics.cost.list(**common):
            if item.cost.currency != "USD":
                raise ValueError(f"cost in {item.cost.currency}, not USD")
            yield ReportRow(
                day=_day(item.starting_at),
                model=item.group.model or "",
                api_key_id=item.group.api_key_id or "",
                workspace_id=item.group.workspace_id or "",
                cost_nano=cents_to_nano(item.cost.amount),
            )


def line_item_model(line_item: str | None) -> str:
    """The model of an OpenAI cost line item ("gpt-4o-2024-08-06, input" -> the model)."""
    if not line_item:
        return ""
    model, separator, _kind = line_item.rpartition(", ")
    return model if separator else line_item


def openai_rows(client: Any, first: date, last: date) -> Iterator[ReportRow]:
    """Completions usage rows, then cost rows, of every UTC day from first to last."""
    usage = client.admin.organization.usage
    for start, end in windows(first, last):
        span = {"start_time": int(start.timestamp()), "end_time": int(end.timestamp())}
        page: str | None = None
        while True:
            extra = {"page": page} if page else {}
            answer = usage.completions(
                **span,
                bucket_width="1d",
                group_by=["model", "api_key_id", "project_id"],
                limit=OPENAI_PAGE_BUCKETS,
                **extra,
            )
            for bucket in answer.data:
                day = datetime.fromtimestamp(bucket.start_time, UTC).date().isoformat()
                for result in bucket.results:
                    if result.object != "organization.usage.completions.result":
                        continue
                    cached = result.input_cached_tokens or 0
                    writes = result.input_cache_write_tokens or 0
                    uncached = result.input_uncached_tokens
                    if uncached is None:  # older answers: input_tokens includes both
                        uncached = result.input_tokens - cached - writes
                    yield ReportRow(
                        day=day,
                        model=result.model or "",
                        api_key_id=result.api_key_id or "",
                        workspace_id=result.project_id or "",
                        uncached_input_tokens=uncached,
                        # OpenAI's writes (30 minutes and 12 hours) under one kind: the
                        # ledger keeps no lifetime split for OpenAI either.
                        cache_write_5m_tokens=writes,
                        cache_read_tokens=cached,
                        output_tokens=result.output_tokens,
                        requests=result.num_model_requests,
                    )
            if not answer.has_more or not answer.next_page:
                break
            page = answer.next_page
        page = None
        while True:
            extra = {"page": page} if page else {}
            # The SDK's type holds the amount as a binary float: the raw answer is read
            # again with decimals for the money, and parsed by the SDK for its shape.
            raw = usage.with_raw_response.costs(
                **span,
                bucket_width="1d",
                group_by=["line_item", "project_id", "api_key_id"],
                limit=WINDOW_DAYS,
                **extra,
            )
            checked = raw.parse()
            body = json.loads(raw.text, parse_float=Decimal)
            for bucket in body["data"]:
                day = datetime.fromtimestamp(bucket["start_time"], UTC).date().isoformat()
                for result in bucket["results"]:
                    if result.get("object") != "organization.costs.result":
                        continue
                    amount = result.get("amount") or {}
                    currency = (amount.get("currency") or "usd").lower()
                    if currency != "usd":
                        raise ValueError(f"cost in {currency}, not USD")
                    yield ReportRow(
                        day=day,
                        model=line_item_model(result.get("line_item")),
                        api_key_id=result.get("api_key_id") or "",
                        workspace_id=result.get("project_id") or "",
                        cost_nano=dollars_to_nano(Decimal(amount.get("value") or 0)),
                    )
            if not checked.has_more or not checked.next_page:
                break
            page = checked.next_page
