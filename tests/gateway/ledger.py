"""What the ledger holds after gateway calls, read straight from the database."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from tokenledger.budgets.models import Reservation
from tokenledger.db import Database
from tokenledger.usage.models import UsageEvent, UsagePrice


def stored_events(database: Database, org_id: int) -> list[dict[str, Any]]:
    with database.session(write=False) as session:
        rows = session.execute(
            select(UsageEvent, UsagePrice.pricing, UsagePrice.provider)
            .join(UsagePrice, UsagePrice.id == UsageEvent.price_id)
            .where(UsageEvent.organization_id == org_id)
            .order_by(UsageEvent.id)
        ).all()
        return [
            {
                "id": event.external_id,
                "provider": provider,
                "model": event.model,
                "input_tokens": event.input_tokens,
                "output_tokens": event.output_tokens,
                "cache_creation_input_tokens": event.cache_creation_input_tokens,
                "cache_read_input_tokens": event.cache_read_input_tokens,
                "cache_write_1h_tokens": event.cache_write_1h_tokens,
                "cost_nano": event.cost_nano,
                "pricing": pricing,
                "unpriced_units": event.unpriced_units,
                "refresh_id": event.refresh_id,
                "metadata": event.metadata_,
                "reservation_id": event.reservation_id,
            }
            for event, pricing, provider in rows
        ]


def holds(database: Database, org_id: int) -> list[Reservation]:
    with database.session(write=False) as session:
        return list(
            session.scalars(
                select(Reservation)
                .where(Reservation.organization_id == org_id)
                .order_by(Reservation.created_at)
            ).all()
        )
