"""Admin routes: price overrides, and the models nobody could price."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from tokenledger.deps import Admin, Session, Viewer
from tokenledger.pricing import overrides
from tokenledger.schemas import InputModel
from tokenledger.usage.models import UsageEvent

router = APIRouter(prefix="/api/pricing", tags=["pricing"])

RateText = str | int | None


class OverrideSet(InputModel):
    input: str | int = Field(description="USD per million input tokens")
    output: str | int
    cache_write_5m: RateText = None
    cache_write_1h: RateText = None
    cache_read: RateText = None


class UnpricedModel(BaseModel):
    provider: str
    model: str
    events: int
    first_seen: str
    last_seen: str


@router.get("/overrides")
def list_overrides(session: Session, _viewer: Viewer) -> list[dict[str, Any]]:
    return [overrides.rates_json(row) for row in overrides.list_overrides(session)]


@router.put("/overrides/{provider}/{model}")
def set_override(
    provider: str, model: str, data: OverrideSet, session: Session, admin: Admin
) -> dict[str, Any]:
    row = overrides.set_override(
        session,
        provider=provider,
        model=model,
        rates=data.model_dump(),
        actor=admin.email,
        client_address=admin.address,
    )
    return overrides.rates_json(row)


@router.delete("/overrides/{provider}/{model}", status_code=204)
def unset_override(provider: str, model: str, session: Session, admin: Admin) -> Response:
    overrides.unset_override(
        session, provider=provider, model=model, actor=admin.email, client_address=admin.address
    )
    return Response(status_code=204)


@router.get("/unpriced")
def unpriced(session: Session, _viewer: Viewer) -> list[UnpricedModel]:
    rows = session.execute(
        select(
            UsageEvent.provider,
            UsageEvent.model,
            func.count(),
            func.min(UsageEvent.timestamp),
            func.max(UsageEvent.timestamp),
        )
        .where(UsageEvent.pricing == "unpriced")
        .group_by(UsageEvent.provider, UsageEvent.model)
        .order_by(func.count().desc())
    ).all()
    return [
        UnpricedModel(
            provider=provider,
            model=model,
            events=count,
            first_seen=str(first),
            last_seen=str(last),
        )
        for provider, model, count, first, last in rows
    ]
