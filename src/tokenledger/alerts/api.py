"""Admin routes: alerts, and the webhooks they are delivered to."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from tokenledger.alerts import service, webhooks
from tokenledger.alerts.models import Webhook
from tokenledger.audit import service as audit
from tokenledger.db import MAX_ROW_ID
from tokenledger.deps import Admin, AppSettings, RowId, Session, Viewer
from tokenledger.errors import not_found
from tokenledger.schemas import PRINTABLE, InputModel, Limit, Offset, Page, QueryText

router = APIRouter(tags=["alerts"])


class AlertRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    type: str
    # None for an alert of no organization (provider.drift: a provider's UTC day).
    organization_id: int | None
    license_id: int | None
    period: str
    details: dict[str, Any] | None
    created_at: datetime
    rearmed_at: datetime | None = None


class DeliveryRead(BaseModel):
    webhook_id: int
    url: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None


class AlertWithDeliveries(AlertRead):
    deliveries: list[DeliveryRead]


class WebhookCreate(InputModel):
    url: str = Field(min_length=8, max_length=2000, pattern=PRINTABLE)
    description: str = Field(default="", max_length=500, pattern=PRINTABLE)


class WebhookRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    url: str
    description: str
    active: bool
    created_at: datetime


class WebhookCreated(WebhookRead):
    secret: str


@router.get("/api/alerts")
def list_alerts(
    session: Session,
    _viewer: Viewer,
    organization_id: Annotated[int | None, Query(ge=1, le=MAX_ROW_ID)] = None,
    type: QueryText = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[AlertWithDeliveries]:
    rows, total = service.list_alerts(session, organization_id, type, limit, offset)
    deliveries = service.deliveries_of(session, [row.id for row in rows])
    items = [
        AlertWithDeliveries(
            **AlertRead.model_validate(row).model_dump(),
            deliveries=[
                DeliveryRead(
                    webhook_id=hook.id,
                    url=hook.url,
                    status=delivery.status,
                    attempts=delivery.attempts,
                    last_status_code=delivery.last_status_code,
                    last_error=delivery.last_error,
                    delivered_at=delivery.delivered_at,
                )
                for delivery, hook in deliveries.get(row.id, [])
            ],
        )
        for row in rows
    ]
    return Page(items=items, total=total, limit=limit, offset=offset)


@router.get("/api/webhooks")
def list_webhooks(session: Session, _viewer: Viewer) -> list[WebhookRead]:
    from sqlalchemy import select

    rows = session.scalars(select(Webhook).order_by(Webhook.id)).all()
    return [WebhookRead.model_validate(row) for row in rows]


@router.post("/api/webhooks", status_code=201)
def create_webhook(
    data: WebhookCreate, session: Session, admin: Admin, settings: AppSettings
) -> WebhookCreated:
    hook = webhooks.create_webhook(
        session, data.url, data.description, settings.webhooks_allow_private
    )
    audit.record_change(
        session,
        admin,
        "webhook.create",
        "webhook",
        hook.id,
        before=None,
        after={"url": hook.url, "description": hook.description},
    )
    return WebhookCreated.model_validate(
        {**WebhookRead.model_validate(hook).model_dump(), "secret": hook.secret}
    )


@router.delete("/api/webhooks/{webhook_id}", status_code=204)
def delete_webhook(webhook_id: RowId, session: Session, admin: Admin) -> Response:
    hook = session.get(Webhook, webhook_id)
    if hook is None:
        raise not_found("webhook", webhook_id)
    before = {"url": hook.url, "description": hook.description}
    session.delete(hook)
    session.flush()
    audit.record_change(
        session,
        admin,
        "webhook.delete",
        "webhook",
        webhook_id,
        before=before,
        after=None,
    )
    return Response(status_code=204)
