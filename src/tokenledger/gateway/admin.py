"""Interrupted calls: gateway holds whose process never settled them (killed mid-call)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session as OrmSession

from tokenledger.budgets import service as budgets
from tokenledger.deps import Now, Session, Viewer
from tokenledger.money import format_usd
from tokenledger.organizations.models import Organization

router = APIRouter(prefix="/api/gateway", tags=["gateway"])


class InterruptedCall(BaseModel):
    reservation_id: str
    organization_id: int
    organization: str
    provider: str | None
    model: str | None
    started_at: datetime
    held_usd: str
    expired_at: datetime


def interrupted_calls(
    session: OrmSession, now: datetime, organization_id: int | None = None
) -> list[dict[str, Any]]:
    """The interrupted calls (newest first, at most 100), as the API and the pages show them."""
    found = budgets.interrupted_calls(session, now, organization_id)
    org_ids = sorted({hold.organization_id for hold in found})
    slugs: dict[int, str] = {}
    if org_ids:
        query = select(Organization.id, Organization.slug).where(Organization.id.in_(org_ids))
        slugs = dict(session.execute(query).all())
    return [
        {
            "reservation_id": hold.id,
            "organization_id": hold.organization_id,
            "organization": slugs.get(hold.organization_id, ""),
            "provider": hold.provider,
            "model": hold.model,
            "started_at": hold.created_at,
            "held_usd": format_usd(hold.amount_nano) or "0.00",
            "expired_at": hold.expires_at,
        }
        for hold in found
    ]


@router.get("/interrupted-calls")
def list_interrupted_calls(
    session: Session,
    _viewer: Viewer,
    now: Now,
    organization_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> list[InterruptedCall]:
    """Calls through the gateway that were held and never settled: their gateway process
    was killed before the provider's answer was recorded. The provider may have billed
    them; the hold no longer counts against the budget once the call's longest duration
    (TOKENLEDGER_GATEWAY_MAX_CALL_SECONDS) is over."""
    return [
        InterruptedCall.model_validate(row)
        for row in interrupted_calls(session, now, organization_id)
    ]
