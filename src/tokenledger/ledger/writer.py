"""Group commit of ingest requests: one thread per process writes them, many per commit.

Requests that arrive while a group is being written wait in a queue; when the group has
committed, everything waiting (up to MAX_GROUP_EVENTS events) becomes the next group, in
one transaction with one commit. A lone request is written at once: no fixed delay.
Every request is answered only after the commit that stored it, all of a group's with
one wake-up of each event loop that waits (not one per request). A batch refused for its
own reason fails alone (ledger.service.record_usage); if the group's transaction fails as
a whole, each of its batches is tried again in a transaction of its own, so that one bad
batch cannot take the others down.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Protocol

from tokenledger.config import Settings
from tokenledger.db import Clock, Database, utcnow
from tokenledger.errors import DomainError
from tokenledger.ledger.prepare import PreparedBatch
from tokenledger.ledger.service import UsageAnswer, record_usage

log = logging.getLogger("tokenledger.writer")

# The most events one group takes (a group always takes at least one batch).
MAX_GROUP_EVENTS = 5000


@dataclass(slots=True)
class _Pending:
    batch: PreparedBatch
    future: asyncio.Future[UsageAnswer]  # of the event loop that waits for it
    outcome: UsageAnswer | BaseException | None = None


class WriterMetrics(Protocol):
    """What the writer reports of its work, given by whoever runs it (ops.Metrics): the
    ledger knows no metrics registry."""

    def usage_group_written(self, requests: int) -> None: ...

    def usage_events_stored(self, created: int, duplicates: int) -> None: ...


class UsageWriter:
    def __init__(
        self,
        database: Database,
        settings: Settings,
        metrics: WriterMetrics,
        clock: Clock = utcnow,
    ) -> None:
        self.database = database
        self.clock = clock
        self.settings = settings
        self.metrics = metrics
        self._queue: deque[_Pending] = deque()
        self._ready = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        # Stored usage_prices ids by fingerprint, read by this writer's groups.
        self._price_ids: dict[str, int] = {}

    async def write(self, batch: PreparedBatch) -> UsageAnswer:
        """Queue a prepared batch; its answer once it is committed (or its refusal)."""
        future: asyncio.Future[UsageAnswer] = asyncio.get_running_loop().create_future()
        with self._ready:
            if self._stopping:
                raise RuntimeError("the usage writer has stopped")
            if self._thread is None:
                # Started on first use: an app served without its lifespan still writes.
                self._thread = threading.Thread(target=self._run, name="usage-writer", daemon=True)
                self._thread.start()
            self._queue.append(_Pending(batch, future))
            self._ready.notify()
        return await future

    def queued(self) -> int:
        """Requests waiting for the next group."""
        with self._ready:
            return len(self._queue)

    def stop(self) -> None:
        """Write what is queued, then end the thread."""
        with self._ready:
            self._stopping = True
            self._ready.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=30)

    def _next_group(self) -> list[_Pending] | None:
        with self._ready:
            while not self._queue:
                if self._stopping:
                    return None
                self._ready.wait()
            group = [self._queue.popleft()]
            events = len(group[0].batch.events)
            while self._queue and events + len(self._queue[0].batch.events) <= MAX_GROUP_EVENTS:
                pending = self._queue.popleft()
                events += len(pending.batch.events)
                group.append(pending)
            return group

    def _run(self) -> None:
        while (group := self._next_group()) is not None:
            try:
                self._write(group)
            except BaseException as exc:  # never leave a request waiting
                log.exception("usage group failed")
                for pending in group:
                    if pending.outcome is None:
                        pending.outcome = exc
            self._answer(group)

    def _write(self, group: list[_Pending]) -> None:
        self.metrics.usage_group_written(len(group))
        try:
            answers = self._commit([pending.batch for pending in group])
        except Exception:
            if len(group) == 1:
                raise
            # Which batch made the group fail is unknown: each alone, in its own commit.
            log.warning("usage group of %d failed; writing its batches one by one", len(group))
            for pending in group:
                try:
                    (pending.outcome,) = self._commit([pending.batch])
                except Exception as exc:
                    pending.outcome = exc
            return
        for pending, answer in zip(group, answers, strict=True):
            pending.outcome = answer

    def _commit(self, batches: list[PreparedBatch]) -> list[UsageAnswer | DomainError]:
        # A group that loses a deadlock (PostgreSQL) is written again in a new transaction.
        return self.database.run_write(
            lambda session: record_usage(
                session, batches, self.settings, self.clock(), self._price_ids
            )
        )

    def _answer(self, group: list[_Pending]) -> None:
        """Hand every outcome to its event loop: one call per loop for the whole group."""
        by_loop: dict[asyncio.AbstractEventLoop, list[_Pending]] = defaultdict(list)
        for pending in group:
            outcome = pending.outcome
            if isinstance(outcome, UsageAnswer):
                self.metrics.usage_events_stored(outcome.created, outcome.duplicates)
            by_loop[pending.future.get_loop()].append(pending)
        for loop, waiting in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, waiting)
            except RuntimeError:  # that loop has closed: nobody waits any more
                log.warning("answers of %d usage requests had no one to go to", len(waiting))


def _settle(group: list[_Pending]) -> None:
    """In the waiting loop: each request's answer, or its refusal."""
    for pending in group:
        if pending.future.done():  # the client went away (the request was cancelled)
            continue
        outcome = pending.outcome
        if isinstance(outcome, BaseException):
            pending.future.set_exception(outcome)
        elif outcome is None:
            pending.future.set_exception(RuntimeError("the usage writer gave no answer"))
        else:
            pending.future.set_result(outcome)
