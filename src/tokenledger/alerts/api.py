"""Admin routes: alerts, and the webhooks they are delivered to."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlalchemy import select

from tokenledger.alerts import service, webhooks
from tokenledger.alerts.models import Webhook
from tokenledger.alerts.schemas import (
    AlertRead,
    AlertWithDeliveries,
    DeliveryRead,
    WebhookCreate,
    WebhookCreated,
    WebhookRead,
)
from tokenledger.db import MAX_ROW_ID
from tokenledger.deps import Admin, AppSettings, RowId, Session, Viewer
from tokenledger.schemas import Limit, Offset, Page, QueryText

router = APIRouter(tags=["alerts"])


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
    rows = session.scalars(select(Webhook).order_by(Webhook.id)).all()
    return [WebhookRead.model_validate(row) for row in rows]


@router.post("/api/webhooks", status_code=201)
def create_webhook(
    data: WebhookCreate, session: Session, admin: Admin, settings: AppSettings
) -> WebhookCreated:
    hook = webhooks.create_webhook(
        session, data, actor=admin, allow_private=settings.webhooks_allow_private
    )
    return WebhookCreated.model_validate(
        {**WebhookRead.model_validate(hook).model_dump(), "secret": hook.secret}
    )


@router.delete("/api/webhooks/{webhook_id}", status_code=204)
def delete_webhook(webhook_id: RowId, session: Session, admin: Admin) -> Response:
    webhooks.delete_webhook(session, webhook_id, actor=admin)
    return Response(status_code=204)
