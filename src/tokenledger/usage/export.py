"""CSV export of an organization's usage events, streamed in constant memory.

The stream owns its database session from the first chunk to the last: the request's
session has ended before the body is sent. Events are read a page at a time by keyset
(timestamp, id), each page fetched whole, so no cursor stays open between chunks. The
session is closed (its transaction rolled back) when the stream ends, fails or is
abandoned by the client; a failure after the first byte is raised, so that the server
drops the connection and the client sees a broken transfer, never a clean end.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncGenerator, Generator
from datetime import datetime
from operator import itemgetter
from typing import Any

import anyio
from sqlalchemy import and_, or_, select
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from tokenledger.db import Database
from tokenledger.money import format_credits, format_usd
from tokenledger.usage.models import UsageEvent, UsagePrice

PAGE_SIZE = 1000

COLUMNS = (
    "id",
    "timestamp",
    "received_at",
    "provider",
    "model",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cache_write_1h_tokens",
    "api_calls",
    "refresh_id",
    "reservation_id",
    "license_id",
    "pricing",
    "cost_usd",
    "credits",
    "price_source",
    "price_version",
    "priced_model",
    "year_month",
)

E = UsageEvent
P = UsagePrice  # how each event was priced: its own row in usage_prices
_SELECTED = (
    E.id,
    E.external_id,
    E.timestamp,
    E.received_at,
    P.provider,
    P.model,
    E.input_tokens,
    E.output_tokens,
    E.cache_creation_input_tokens,
    E.cache_read_input_tokens,
    E.cache_write_1h_tokens,
    E.api_calls,
    E.refresh_id,
    E.reservation_id,
    E.license_id,
    P.pricing,
    E.cost_nano,
    E.credits_micro,
    P.price_source,
    P.price_version,
    P.priced_model,
    E.year_month,
)

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def cell(text: str) -> str:
    """Caller-supplied text, defused so that a spreadsheet does not run it as a formula."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def _csv_row(row: Any) -> tuple[object, ...]:
    return (
        cell(row.external_id),
        row.timestamp.isoformat(),
        row.received_at.isoformat(),
        cell(row.provider),
        cell(row.model),
        row.input_tokens,
        row.output_tokens,
        row.cache_creation_input_tokens,
        row.cache_read_input_tokens,
        row.cache_write_1h_tokens,
        row.api_calls,
        cell(row.refresh_id or ""),
        cell(row.reservation_id or ""),
        row.license_id or "",
        row.pricing,
        format_usd(row.cost_nano) or "",
        format_credits(row.credits_micro) or "",
        row.price_source or "",
        row.price_version or "",
        row.priced_model or "",
        row.year_month,
    )


def csv_chunks(
    database: Database,
    org_id: int,
    start: datetime,
    end: datetime,
    page_size: int = PAGE_SIZE,
    columns: tuple[str, ...] = COLUMNS,
) -> Generator[str, None, None]:
    """The header, then one chunk per page of events in [start, end), oldest first;
    `columns`: a subset of COLUMNS, in their order (the tenant's export may leave cost out)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    if columns == COLUMNS:
        pick = None
    else:
        wanted = [COLUMNS.index(name) for name in columns]
        pick = itemgetter(*wanted)
    yield buffer.getvalue()
    in_range = (E.organization_id == org_id, E.timestamp >= start, E.timestamp < end)
    with database.session(write=False) as session:
        if database.dialect_name == "postgresql":
            # One snapshot for the whole export, as SQLite's read transaction gives.
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        after: tuple[datetime, int] | None = None
        while True:
            query = select(*_SELECTED).select_from(E).join(P, P.id == E.price_id).where(*in_range)
            if after is not None:
                at, row_id = after
                query = query.where(or_(E.timestamp > at, and_(E.timestamp == at, E.id > row_id)))
            rows = session.execute(query.order_by(E.timestamp, E.id).limit(page_size)).all()
            if not rows:
                return
            buffer.seek(0)
            buffer.truncate()
            if pick is None:
                writer.writerows(_csv_row(row) for row in rows)
            else:
                writer.writerows(pick(_csv_row(row)) for row in rows)
            yield buffer.getvalue()
            if len(rows) < page_size:
                return
            after = (rows[-1].timestamp, rows[-1].id)


async def _in_threads(chunks: Generator[str, None, None]) -> AsyncGenerator[bytes, None]:
    """Each chunk made in a worker thread; the generator closed however the stream ends."""
    try:
        while True:
            # Not abandoned on cancellation: a running next() finishes before close().
            chunk = await run_in_threadpool(next, chunks, None)
            if chunk is None:
                return
            yield chunk.encode()
    finally:
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(chunks.close)


class ClosingStreamingResponse(StreamingResponse):
    """A stream of a generator that holds resources: closed on success, error or disconnect.

    Starlette never closes an abandoned body iterator (it is left to the garbage
    collector), which would keep the generator's database session open.
    """

    def __init__(
        self,
        chunks: Generator[str, None, None],
        media_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._stream = _in_threads(chunks)
        super().__init__(self._stream, media_type=media_type, headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()
