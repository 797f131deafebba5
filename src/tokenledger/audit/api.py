"""Admin route for the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from tokenledger.audit import service
from tokenledger.deps import Session, Viewer
from tokenledger.schemas import Limit, Offset, Page, QueryText

router = APIRouter(prefix="/api/audit-log", tags=["audit"])


class AuditEntryRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    created_at: datetime
    actor: str
    action: str
    entity_type: str
    entity_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    client_address: str | None


@router.get("")
def audit_log(
    session: Session,
    _viewer: Viewer,
    entity_type: QueryText = None,
    entity_id: QueryText = None,
    actor: QueryText = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[AuditEntryRead]:
    rows, total = service.list_entries(
        session,
        entity_type=entity_type,
        entity_id=entity_id,
        actor=actor,
        limit=limit,
        offset=offset,
    )
    items = [AuditEntryRead.model_validate(row) for row in rows]
    return Page(items=items, total=total, limit=limit, offset=offset)
