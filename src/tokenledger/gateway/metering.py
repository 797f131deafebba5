"""Every call of the gateway into the ledger's write path, in one place: the hold before a
call, the one usage event after it (which settles the hold in its own transaction, through
the group commit of POST /api/v1/usage), and the release of a hold no usage follows."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session

from tokenledger.budgets import service as budgets
from tokenledger.config import Settings
from tokenledger.db import Database
from tokenledger.errors import DomainError
from tokenledger.hot import HotReads
from tokenledger.ledger import prices
from tokenledger.ledger.prepare import prepare
from tokenledger.ledger.service import UsageAnswer
from tokenledger.ledger.writer import UsageWriter
from tokenledger.money import NANO_PER_USD
from tokenledger.usage.schemas import UsageBatch, UsageEventIn

log = logging.getLogger("tokenledger.gateway")

# The unit named on an event whose stream broke before its final usage: the event is then
# partially priced, and listed with the events to review (GET /api/pricing/unpriced).
INCOMPLETE_UNIT = "gateway.stream_incomplete"


# The most holds and releases one transaction of the HoldWriter takes.
MAX_GROUP = 500


@dataclass(slots=True)
class _Job:
    work: Callable[[Session], Any]
    future: asyncio.Future[Any]
    outcome: Any = None
    failed: BaseException | None = None


class HoldWriter:
    """Group commit of holds and releases, as ledger/writer.py does for events: what arrives
    while a group is written becomes the next group, one transaction and one commit for
    all. Each hold is still checked against what remains after the holds before it in the
    group (the same transaction sees them), under the license rows' lock."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._queue: deque[_Job] = deque()
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    async def run(self, work: Callable[[Session], Any]) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        with self._ready:
            if self._stopping:
                raise RuntimeError("the hold writer has stopped")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="gateway-holds", daemon=True
                )
                self._thread.start()
            self._queue.append(_Job(work, future))
            self._ready.notify()
        return await future

    def stop(self) -> None:
        with self._ready:
            self._stopping = True
            self._ready.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=30)

    def _next(self) -> list[_Job] | None:
        with self._ready:
            while not self._queue:
                if self._stopping:
                    return None
                self._ready.wait()
            group: list[_Job] = []
            while self._queue and len(group) < MAX_GROUP:
                group.append(self._queue.popleft())
            return group

    def _loop(self) -> None:
        while (group := self._next()) is not None:
            try:
                self._write(group)
            except BaseException as exc:  # never leave a call waiting
                log.exception("hold group failed")
                for job in group:
                    if job.failed is None and job.outcome is None:
                        job.failed = exc
            for job in group:
                try:
                    job.future.get_loop().call_soon_threadsafe(_settle, job)
                except RuntimeError:  # that loop has closed: nobody waits any more
                    log.warning("a hold's answer had no one to go to")

    def _write(self, group: list[_Job]) -> None:
        try:
            self._commit(group)
        except Exception:
            if len(group) == 1:
                raise
            for job in group:  # which one failed the group is unknown: each alone
                job.outcome = job.failed = None
                try:
                    self._commit([job])
                except Exception as exc:
                    job.failed = exc

    def _commit(self, group: list[_Job]) -> None:
        with self.database.session(write=True) as session:
            for job in group:
                try:
                    job.outcome = job.work(session)
                except DomainError as exc:  # refused before it changed anything
                    job.failed = exc


def _settle(job: _Job) -> None:
    if job.future.done():
        return
    if job.failed is not None:
        job.future.set_exception(job.failed)
    else:
        job.future.set_result(job.outcome)


@dataclass(frozen=True, slots=True)
class Ledger:
    """The parts of the app the gateway writes through."""

    database: Database
    settings: Settings
    hot: HotReads
    writer: UsageWriter
    holds: HoldWriter = field(repr=False)


@dataclass(frozen=True, slots=True)
class Call:
    """One call through the gateway, as held."""

    organization_id: int
    organization_slug: str
    provider: str
    model: str
    hold_id: str
    held_nano: int
    refresh_id: str | None
    metadata: dict[str, Any] | None
    touch_key_id: int | None


async def hold(
    ledger: Ledger,
    organization_id: int,
    provider: str,
    model: str,
    amount: int | None,
    now: datetime,
) -> str:
    """Hold the call's bound (budgets.service.hold: atomic check and hold); its id."""

    def write(session: Session) -> str:
        reservation = budgets.hold(
            session,
            organization_id,
            amount,
            ledger.settings.gateway_max_call_seconds,
            ledger.settings.timezone,
            now,
            kind="gateway",
            provider=provider,
            model=model,
        )
        return reservation.id

    result: str = await ledger.holds.run(write)
    return result


async def release(ledger: Ledger, call: Call, now: datetime) -> None:
    """A call that brought no usage (the provider refused it): its hold is released."""

    def write(session: Session) -> None:
        budgets.release_reservation(session, call.hold_id, call.organization_id, now)

    await ledger.holds.run(write)


async def record(
    ledger: Ledger,
    call: Call,
    *,
    response_id: str | None,
    model: str | None,
    usage: dict[str, Any] | None,
    service_tier: str | None,
    complete: bool,
    now: datetime,
) -> UsageAnswer:
    """The call's one usage event, settling its hold, committed before this returns.

    An incomplete call (a stream that broke before its final usage) is recorded with the
    usage it reported, or at its hold when it reported none (never at 0), and named for
    review (INCOMPLETE_UNIT).
    """
    values: dict[str, Any] = {
        "id": response_id or f"gateway_{call.hold_id}",
        # By slug: the hot cache answers it (an id given as text is looked up as a slug too).
        "organization": call.organization_slug,
        "provider": call.provider,
        "model": model or call.model,
        "refresh_id": call.refresh_id,
        "metadata": call.metadata,
        "reservation_id": call.hold_id,
    }
    if usage:
        values["usage"] = usage
        if service_tier is not None:
            values["service_tier"] = service_tier
    else:
        values["cost_usd"] = Decimal(call.held_nano) / NANO_PER_USD
    batch = UsageBatch(events=[UsageEventIn.model_validate(values)])
    prepared = prepare(
        batch,
        key_org_id=None,
        organizations=ledger.hot.organizations,
        book=ledger.hot.price_book(),
        settings=ledger.settings,
        now=now,
    )
    for item in prepared.events:
        # The provider's response id names one call: stored already (an OpenTelemetry span
        # of the same call got there first), this event is that call's duplicate, never a
        # conflict, whatever the span reported (the OTLP route's rule, ledger/otlp.py).
        item.call_id = response_id is not None
        if not complete:
            _mark_incomplete(item.row)
    prepared.touch_key_id = call.touch_key_id
    answer = await ledger.writer.write(prepared)
    if answer.duplicates:
        # A duplicate settles nothing: the call is counted once, by the event stored first,
        # so its hold is let go rather than left to look like an interrupted call.
        await release(ledger, call, now)
    return answer


def _mark_incomplete(row: dict[str, Any]) -> None:
    units = [unit for unit in (row.get("unpriced_units") or "").split(",") if unit]
    row["unpriced_units"] = ",".join([*units, INCOMPLETE_UNIT])
    if row["pricing"] in ("priced", "provided"):
        row["pricing"] = "partially_priced"
    row["price_key"] = prices.price_fingerprint(row)
