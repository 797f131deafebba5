"""Admin routes for portal links: create one, revoke them all."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from tokenledger.deps import Admin, AppSettings, Now, RowId, Session
from tokenledger.organizations import service as organizations
from tokenledger.portal import links

router = APIRouter(prefix="/api/organizations", tags=["portal"])


class PortalLinkCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expires_in_hours: int | None = Field(
        default=None,
        ge=1,
        le=10**6,
        description="default TOKENLEDGER_PORTAL_LINK_HOURS; at most "
        "TOKENLEDGER_PORTAL_LINK_MAX_HOURS",
    )


class PortalLinkRead(BaseModel):
    url: str
    expires_at: datetime


@router.post("/{org_id}/portal-links", status_code=201)
def create_portal_link(
    org_id: RowId,
    request: Request,
    session: Session,
    admin: Admin,
    settings: AppSettings,
    now: Now,
    data: PortalLinkCreate | None = None,
) -> PortalLinkRead:
    """A signed link to the organization's read-only portal, expiring (default 24 hours)."""
    org = organizations.get(session, org_id)
    hours = data.expires_in_hours if data is not None else None
    link = links.create_link(session, org, admin, settings, now, hours)
    return PortalLinkRead(
        url=links.portal_url(str(request.base_url), link.token), expires_at=link.expires_at
    )


@router.delete("/{org_id}/portal-links", status_code=204)
def revoke_portal_links(org_id: RowId, session: Session, admin: Admin, now: Now) -> Response:
    """Revoke every portal link of the organization made so far."""
    org = organizations.get(session, org_id)
    links.revoke_all(session, org, admin, now)
    return Response(status_code=204)
