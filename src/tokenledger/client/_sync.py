"""The blocking client: a background thread sends the batches."""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, Self, cast

import httpx

from tokenledger.client._delivery import (
    ClientCore,
    FlushReport,
    Reply,
    Request,
    RetryPolicy,
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
from tokenledger.client._events import build_event

log = logging.getLogger("tokenledger.client")


class TokenLedgerClient(ClientCore[httpx.Client]):
    """Records usage events and delivers them in batches, at least once, deduplicated by id."""

    def _connect(self, *, base_url: str, timeout: float, headers: dict[str, str]) -> httpx.Client:
        return httpx.Client(base_url=base_url, timeout=timeout, headers=headers)

    def _setup(self) -> None:
        # One flush at a time: the background thread's and the caller's never interleave.
        self._send_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.flush_interval is not None:
            self._thread = threading.Thread(target=self._run, name="tokenledger-flush", daemon=True)
            self._thread.start()
        # The thread is a daemon; without this, events of a forgotten close() would be lost.
        atexit.register(self.close)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def record(
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
        if self._unsettled.add(event) >= self.batch_size:
            if self._thread is not None:
                self._wake.set()
            else:
                self.flush()
        return event.id

    def flush(self) -> FlushReport:
        """Send every pending event now; never raises because the server is unreachable."""
        with self._send_lock:
            return self._flush(self._policy, None)

    def close(self) -> FlushReport:
        """Stop the background thread, flush what is left, and release the connection."""
        if not self._unsettled.close():
            return FlushReport(pending=self._unsettled.pending)
        atexit.unregister(self.close)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        try:
            with self._send_lock:
                report = self._flush(self._policy, None)
        finally:
            self._http.close()
        self._log_lost(report)
        return report

    def refresh(
        self,
        organization: str | int,
        refresh_id: str,
        status: str,
        started_at: datetime | str | None = None,
        finished_at: datetime | str | None = None,
    ) -> dict[str, Any]:
        """Report a run's outcome now (with retries, not spooled); raises if it cannot."""
        request = refresh_request(organization, refresh_id, status, started_at, finished_at)
        return result_of(self._drive(send_with_retries(request, self._policy), None))

    def budget(self, organization: str | int) -> dict[str, Any]:
        """May this organization spend now: GET /api/v1/budget."""
        request = budget_request(organization)
        return result_of(self._drive(send_with_retries(request, self._policy), None))

    def _flush(self, policy: RetryPolicy, stop: threading.Event | None) -> FlushReport:
        batches = self._unsettled.batches(self.batch_size)
        if not batches:
            return FlushReport()
        outcome = self._drive(flush_steps(batches, policy), stop)
        return self._unsettled.settle(outcome)

    def _run(self) -> None:
        interval = cast(float, self.flush_interval)
        while not self._stop.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                with self._send_lock:
                    report = self._flush(self._policy, self._stop)
            except Exception:
                log.exception("background flush failed")
                report = None
            if report is None or report.error is not None:
                # Pause before the next attempt even if records keep waking us.
                self._stop.wait(interval)

    def _drive(self, steps: Steps[T], stop: threading.Event | None) -> T:
        """Run a delivery generator: do its requests and sleeps, feed back the results."""
        message: Reply | bool
        try:
            action = next(steps)
            while True:
                if isinstance(action, Sleep):
                    if stop is None:
                        time.sleep(action.seconds)
                        message = True
                    else:
                        message = not stop.wait(action.seconds)
                else:
                    message = self._send(action)
                action = steps.send(message)
        except StopIteration as done:
            return cast(T, done.value)

    def _send(self, request: Request) -> Reply:
        try:
            response = self._http.request(request.method, request.path, **send_options(request))
        except httpx.TransportError as exc:
            return transport_failure(exc)
        return reply_of(response.status_code, response.content, response.headers.get("retry-after"))
