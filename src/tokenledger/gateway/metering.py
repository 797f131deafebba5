"""Every call of the gateway into the ledger's write path, in one place: the hold before a
call, the one usage event after it (which settles the hold in its own transaction, through
the group commit of POST /api/v1/usage), and the release of a hold no usage follows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from starlette.concurrency import run_in_threadpool

from tokenledger.budgets import service as budgets
from tokenledger.config import Settings
from tokenledger.db import Database
from tokenledger.hot import HotReads
from tokenledger.ledger import ingest, prices
from tokenledger.ledger.service import UsageAnswer
from tokenledger.ledger.writer import UsageWriter
from tokenledger.money import NANO_PER_USD
from tokenledger.usage.schemas import UsageBatch, UsageEventIn

# The unit named on an event whose stream broke before its final usage: the event is then
# partially priced, and listed with the events to review (GET /api/pricing/unpriced).
INCOMPLETE_UNIT = "gateway.stream_incomplete"


@dataclass(frozen=True, slots=True)
class Ledger:
    """The parts of the app the gateway writes through."""

    database: Database
    settings: Settings
    hot: HotReads
    writer: UsageWriter


@dataclass(frozen=True, slots=True)
class Call:
    """One call through the gateway, as held."""

    organization_id: int
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

    def write() -> str:
        with ledger.database.session(write=True) as session:
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

    return await run_in_threadpool(write)


async def release(ledger: Ledger, call: Call, now: datetime) -> None:
    """A call that brought no usage (the provider refused it): its hold is released."""

    def write() -> None:
        with ledger.database.session(write=True) as session:
            budgets.release_reservation(session, call.hold_id, call.organization_id, now)

    await run_in_threadpool(write)


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
        "organization": call.organization_id,
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
    prepared = ingest.prepare(
        batch,
        key_org_id=None,
        organizations=ledger.hot.organizations,
        book=ledger.hot.price_book(),
        settings=ledger.settings,
        now=now,
    )
    if not complete:
        for item in prepared.events:
            _mark_incomplete(item.row)
    prepared.touch_key_id = call.touch_key_id
    return await ledger.writer.write(prepared)


def _mark_incomplete(row: dict[str, Any]) -> None:
    units = [unit for unit in (row.get("unpriced_units") or "").split(",") if unit]
    row["unpriced_units"] = ",".join([*units, INCOMPLETE_UNIT])
    if row["pricing"] in ("priced", "provided"):
        row["pricing"] = "partially_priced"
    row["price_key"] = prices.price_fingerprint(row)
