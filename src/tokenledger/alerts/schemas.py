"""Alert and webhook shapes of the API (and of the webhook form)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tokenledger.schemas import PRINTABLE, InputModel


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
