"""Admin routes for organizations."""

from __future__ import annotations

from fastapi import APIRouter, Response

from tokenledger.deps import Admin, Now, RowId, Session, Viewer
from tokenledger.organizations import service
from tokenledger.organizations.schemas import (
    OrganizationCreate,
    OrganizationRead,
    OrganizationUpdate,
)
from tokenledger.schemas import Limit, Offset, Page, QueryText

router = APIRouter(prefix="/api/organizations", tags=["organizations"])


@router.get("")
def list_organizations(
    session: Session,
    _viewer: Viewer,
    q: QueryText = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[OrganizationRead]:
    rows, total = service.search(session, q, limit, offset)
    items = [OrganizationRead.model_validate(row) for row in rows]
    return Page(items=items, total=total, limit=limit, offset=offset)


@router.post("", status_code=201)
def create_organization(
    data: OrganizationCreate, session: Session, admin: Admin
) -> OrganizationRead:
    org = service.create(session, data, actor=admin)
    return OrganizationRead.model_validate(org)


@router.get("/{org_id}")
def get_organization(org_id: RowId, session: Session, _viewer: Viewer) -> OrganizationRead:
    return OrganizationRead.model_validate(service.get(session, org_id))


@router.patch("/{org_id}")
def update_organization(
    org_id: RowId, data: OrganizationUpdate, session: Session, admin: Admin, now: Now
) -> OrganizationRead:
    org = service.update(session, service.get(session, org_id), data, actor=admin, now=now)
    return OrganizationRead.model_validate(org)


@router.delete("/{org_id}", status_code=204)
def delete_organization(org_id: RowId, session: Session, admin: Admin) -> Response:
    service.delete(session, service.get(session, org_id), actor=admin)
    return Response(status_code=204)
