"""Group commit of ingest requests and of the gateway's holds: one thread per process
writes them, many per commit.

Requests that arrive while a group is being written wait in a queue; when the group has
committed, everything waiting (up to MAX_GROUP_EVENTS events) becomes the next group, in
one transaction with one commit. A lone request is written at once: no fixed delay.
Every request is answered only after the commit that stored it, all of a group's with
one wake-up of each event loop that waits (not one per request). A batch (or a hold)
refused for its own reason fails alone (ledger.service.write_group); if the group's
transaction fails as a whole, each of its requests is tried again in a transaction of its
own, so that one bad request cannot take the others down.

The gateway's holds and releases go through the same queue as the events of finished
calls: one transaction carries both (a call's hold and another call's event share one
commit), and each hold is checked against what remains after everything before it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any, Protocol

from tokenledger.budgets.service import NewHold
from tokenledger.config import Settings
from tokenledger.db import Clock, Database, utcnow
from tokenledger.errors import DomainError
from tokenledger.ledger.prepare import PreparedBatch
from tokenledger.ledger.service import UsageAnswer, write_group

log = logging.getLogger("tokenledger.writer")

# The most events one group takes (a group always takes at least one batch).
MAX_GROUP_EVENTS = 5000


# What one request of a group is: a batch of events, a new hold, or a hold to release
# (its id and organization id).
Work = PreparedBatch | NewHold | tuple[str, int]
# What it gets: the batch's answer; a hold's id once placed; None for a release.
Outcome = UsageAnswer | str | None

_NO_OUTCOME = object()


@dataclass(slots=True)
class _Pending:
    work: Work
    future: asyncio.Future[Any]  # of the event loop that waits for it
    outcome: Outcome | BaseException | object = _NO_OUTCOME

    @property
    def size(self) -> int:
        return len(self.work.events) if isinstance(self.work, PreparedBatch) else 1


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
        answer: UsageAnswer = await self._submit(batch)
        return answer

    async def hold(self, new: NewHold) -> None:
        """Place a hold (budgets.place_holds); back once it is committed, or its refusal."""
        await self._submit(new)

    async def release(self, hold_id: str, organization_id: int) -> None:
        """Release a hold still held; back once that is committed."""
        await self._submit((hold_id, organization_id))

    async def _submit(self, work: Work) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        with self._ready:
            if self._stopping:
                raise RuntimeError("the usage writer has stopped")
            if self._thread is None:
                # Started on first use: an app served without its lifespan still writes.
                self._thread = threading.Thread(target=self._run, name="usage-writer", daemon=True)
                self._thread.start()
            self._queue.append(_Pending(work, future))
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
            events = group[0].size
            while self._queue and events + self._queue[0].size <= MAX_GROUP_EVENTS:
                pending = self._queue.popleft()
                events += pending.size
                group.append(pending)
            return group

    def _run(self) -> None:
        while (group := self._next_group()) is not None:
            try:
                self._write(group)
            except BaseException as exc:  # never leave a request waiting
                log.exception("usage group failed")
                for pending in group:
                    if pending.outcome is _NO_OUTCOME:
                        pending.outcome = exc
            self._answer(group)

    def _write(self, group: list[_Pending]) -> None:
        self.metrics.usage_group_written(len(group))
        try:
            outcomes = self._commit([pending.work for pending in group])
        except Exception:
            if len(group) == 1:
                raise
            # Which request made the group fail is unknown: each alone, in its own commit.
            log.warning("usage group of %d failed; writing its requests one by one", len(group))
            for pending in group:
                try:
                    (pending.outcome,) = self._commit([pending.work])
                except Exception as exc:
                    pending.outcome = exc
            return
        for pending, outcome in zip(group, outcomes, strict=True):
            pending.outcome = outcome

    def _commit(self, works: list[Work]) -> list[Outcome | DomainError]:
        """The group's transaction; each request's outcome, in order."""
        batches = [work for work in works if isinstance(work, PreparedBatch)]
        holds = [work for work in works if isinstance(work, NewHold)]
        releases = [work for work in works if isinstance(work, tuple)]
        # A group that loses a deadlock (PostgreSQL) is written again in a new transaction.
        answers, placed = self.database.run_write(
            lambda session: write_group(
                session,
                batches,
                self.settings,
                self.clock(),
                self._price_ids,
                holds=holds,
                releases=releases,
            )
        )
        answered = iter(answers)
        refused = iter(placed)
        outcomes: list[Outcome | DomainError] = []
        for work in works:
            if isinstance(work, PreparedBatch):
                outcomes.append(next(answered))
            elif isinstance(work, NewHold):
                outcomes.append(next(refused) or work.id)
            else:
                outcomes.append(None)
        return outcomes

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
        elif outcome is _NO_OUTCOME:
            pending.future.set_exception(RuntimeError("the usage writer gave no answer"))
        else:
            pending.future.set_result(outcome)
