"""The asyncio client: the same behaviour, with a background task instead of a thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, Self, cast

import httpx

from tokenledger.client._delivery import (
    ClientCore,
    FlushOutcome,
    FlushReport,
    Reply,
    Request,
    Sleep,
    Steps,
    T,
    budget_request,
    flush_steps,
    refresh_request,
    reply_of,
    result_of,
    send_options,
    send_with_retries,
    transport_failure,
)
from tokenledger.client._events import Event, build_event

log = logging.getLogger("tokenledger.client")


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Wait for the event at most `seconds`; whether it was set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
    return event.is_set()


class AsyncTokenLedgerClient(ClientCore[httpx.AsyncClient]):
    """Records usage events and delivers them in batches, at least once, deduplicated by id."""

    def _connect(
        self, *, base_url: str, timeout: float, headers: dict[str, str]
    ) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=headers)

    def _setup(self) -> None:
        self._send_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def record(
        self,
        organization: str | int,
        model: str,
        usage: object,
        *,
        refresh_id: str | None = None,
        provider: str | None = None,
        timestamp: datetime | str | None = None,
        event_id: str | None = None,
        cost_usd: Decimal | int | float | str | None = None,
        reservation_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        api_calls: int = 1,
        service_tier: str | None = None,
    ) -> str:
        """Queue one event (spooled durably first, if spooling) and return its id."""
        event = build_event(
            organization,
            model,
            usage,
            refresh_id=refresh_id,
            provider=provider,
            timestamp=timestamp,
            event_id=event_id,
            cost_usd=cost_usd,
            reservation_id=reservation_id,
            metadata=metadata,
            api_calls=api_calls,
            service_tier=service_tier,
        )
        pending = await self._blocking_io(self._unsettled.add, event)
        self._start()
        if pending >= self.batch_size:
            if self._task is not None:
                self._wake.set()
            else:
                await self.flush()
        return event.id

    async def flush(self) -> FlushReport:
        """Send every pending event now; never raises because the server is unreachable."""
        async with self._send_lock:
            return await self._flush(None)

    async def close(self) -> FlushReport:
        """Stop the background task, flush what is left, and release the connection."""
        if not self._unsettled.close():
            return FlushReport(pending=self._unsettled.pending)
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            await self._task
        try:
            async with self._send_lock:
                report = await self._flush(None)
        finally:
            await self._http.aclose()
        self._log_lost(report)
        return report

    async def refresh(
        self,
        organization: str | int,
        refresh_id: str,
        status: str,
        started_at: datetime | str | None = None,
        finished_at: datetime | str | None = None,
    ) -> dict[str, Any]:
        """Report a run's outcome now (with retries, not spooled); raises if it cannot."""
        request = refresh_request(organization, refresh_id, status, started_at, finished_at)
        return result_of(await self._drive(send_with_retries(request, self._policy), None))

    async def budget(self, organization: str | int) -> dict[str, Any]:
        """May this organization spend now: GET /api/v1/budget."""
        request = budget_request(organization)
        return result_of(await self._drive(send_with_retries(request, self._policy), None))

    def _start(self) -> None:
        # Started from a coroutine, not __init__: a task needs the running loop.
        if self._task is None and self.flush_interval is not None and not self._unsettled.closed:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="tokenledger-flush"
            )

    async def _blocking_io(self, function: Callable[[Event], T], event: Event) -> T:
        # Spool writes fsync; keep them off the event loop.
        if self._unsettled.spool is None:
            return function(event)
        return await asyncio.to_thread(function, event)

    async def _flush(self, stop: asyncio.Event | None) -> FlushReport:
        batches = self._unsettled.batches(self.batch_size)
        if not batches:
            return FlushReport()
        outcome = await self._drive(flush_steps(batches, self._policy), stop)
        return await self._settle(outcome)

    async def _settle(self, outcome: FlushOutcome) -> FlushReport:
        if self._unsettled.spool is None and self._unsettled.dead_letters is None:
            return self._unsettled.settle(outcome)
        return await asyncio.to_thread(self._unsettled.settle, outcome)

    async def _run(self) -> None:
        interval = cast(float, self.flush_interval)
        while not self._stop.is_set():
            await _wait(self._wake, interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                async with self._send_lock:
                    report = await self._flush(self._stop)
            except Exception:
                log.exception("background flush failed")
                report = None
            if report is None or report.error is not None:
                # Pause before the next attempt even if records keep waking us.
                await _wait(self._stop, interval)

    async def _drive(self, steps: Steps[T], stop: asyncio.Event | None) -> T:
        """Run a delivery generator: do its requests and sleeps, feed back the results."""
        message: Reply | bool
        try:
            action = next(steps)
            while True:
                if isinstance(action, Sleep):
                    if stop is None:
                        await asyncio.sleep(action.seconds)
                        message = True
                    else:
                        message = not await _wait(stop, action.seconds)
                else:
                    message = await self._send(action)
                action = steps.send(message)
        except StopIteration as done:
            return cast(T, done.value)

    async def _send(self, request: Request) -> Reply:
        try:
            response = await self._http.request(
                request.method, request.path, **send_options(request)
            )
        except httpx.TransportError as exc:
            return transport_failure(exc)
        return reply_of(response.status_code, response.content, response.headers.get("retry-after"))
