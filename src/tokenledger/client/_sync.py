"""The blocking client: a background thread sends the batches."""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast

import httpx

from tokenledger.client._delivery import (
    MAX_BATCH_SIZE,
    FlushReport,
    Ledger,
    Reply,
    Request,
    RetryPolicy,
    Sleep,
    Steps,
    T,
    budget_request,
    flush_steps,
    parse_retry_after,
    refresh_request,
    result_of,
    send_with_retries,
)
from tokenledger.client._events import build_event

log = logging.getLogger("tokenledger.client")

USER_AGENT = "tokenledger-client/0.1"


def check_options(batch_size: int, flush_interval: float | None, max_retries: int) -> None:
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_SIZE}")
    if flush_interval is not None and flush_interval <= 0:
        raise ValueError("flush_interval must be positive, or None for no background flushes")
    if max_retries < 0:
        raise ValueError("max_retries must not be negative")


class TokenLedgerClient:
    """Records usage events and delivers them in batches, at least once, deduplicated by id."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        spool_path: str | Path | None = None,
        dead_letter_path: str | Path | None = None,
        batch_size: int = 100,
        flush_interval: float | None = 1.0,
        timeout: float = 10.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        check_options(batch_size, flush_interval, max_retries)
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self._policy = RetryPolicy(max_retries, backoff, max_backoff)
        self._http = httpx.Client(
            base_url=base_url,
            timeout=timeout,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT},
        )
        self._ledger = Ledger(spool_path, dead_letter_path)
        self._ledger.replay()
        # One flush at a time: the background thread's and the caller's never interleave.
        self._send_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if flush_interval is not None:
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

    @property
    def pending(self) -> int:
        """Events recorded and not yet acknowledged (or dead-lettered)."""
        return self._ledger.pending

    def record(
        self,
        organization: str | int,
        model: str,
        usage: object,
        *,
        refresh_id: str | None = None,
        provider: str = "anthropic",
        timestamp: datetime | str | None = None,
        event_id: str | None = None,
        cost_usd: Decimal | int | float | str | None = None,
        reservation_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        api_calls: int = 1,
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
        )
        if self._ledger.add(event) >= self.batch_size:
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
        if not self._ledger.close():
            return FlushReport(pending=self._ledger.pending)
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
        if report.pending and self._ledger.spool is None:
            log.error(
                "closed with %d undelivered events and no spool: they are lost", report.pending
            )
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
        batches = self._ledger.batches(self.batch_size)
        if not batches:
            return FlushReport()
        outcome = self._drive(flush_steps(batches, policy), stop)
        return self._ledger.settle(outcome)

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
            response = self._http.request(
                request.method,
                request.path,
                content=request.content,
                params=request.params,
                headers={"Content-Type": "application/json"} if request.content else None,
            )
        except httpx.TransportError as exc:
            return Reply(None, failure=f"{type(exc).__name__}: {exc}")
        return Reply(
            response.status_code,
            response.content,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )
