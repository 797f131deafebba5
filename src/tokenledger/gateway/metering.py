"""Every call of the gateway into the ledger's write path, in one place: the hold before a
call, the one usage event after it (which settles the hold in its own transaction), and
the release of a hold no usage follows. All three go through the group commit of
POST /api/v1/usage (ledger/writer.py): the holds of calls that start and the events of
calls that end share its transactions, one commit for all."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from tokenledger.budgets.service import NewHold
from tokenledger.config import Settings
from tokenledger.db import Database
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
    """Hold the call's bound, checked against what remains in the writer's transaction
    (budgets.place_holds); its id once committed, or the refusal (DomainError)."""
    new = NewHold(
        id="res_" + uuid.uuid4().hex,
        organization_id=organization_id,
        amount_nano=amount,
        created_at=now,
        expires_at=now + timedelta(seconds=ledger.settings.gateway_max_call_seconds),
        provider=provider,
        model=model,
    )
    await ledger.writer.hold(new)
    return new.id


async def release(ledger: Ledger, call: Call) -> None:
    """A call that brought no usage (the provider refused it): its hold is released."""
    await ledger.writer.release(call.hold_id, call.organization_id)


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
        await release(ledger, call)
    return answer


def _mark_incomplete(row: dict[str, Any]) -> None:
    units = [unit for unit in (row.get("unpriced_units") or "").split(",") if unit]
    row["unpriced_units"] = ",".join([*units, INCOMPLETE_UNIT])
    if row["pricing"] in ("priced", "provided"):
        row["pricing"] = "partially_priced"
    row["price_key"] = prices.price_fingerprint(row)
