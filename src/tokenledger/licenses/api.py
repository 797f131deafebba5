"""Admin routes for licenses."""

from __future__ import annotations

from fastapi import APIRouter

from tokenledger.budgets import changes
from tokenledger.deps import Admin, AppSettings, Now, RowId, Session, Viewer
from tokenledger.licenses import service
from tokenledger.licenses.schemas import LicenseCreate, LicenseRead, LicenseUpdate

router = APIRouter(tags=["licenses"])


@router.post("/api/licenses", status_code=201)
def create_license(data: LicenseCreate, session: Session, admin: Admin, now: Now) -> LicenseRead:
    lic = service.create(session, data, now, actor=admin)
    return service.to_read(lic)


@router.get("/api/licenses/{license_id}")
def get_license(license_id: RowId, session: Session, _viewer: Viewer) -> LicenseRead:
    return service.to_read(service.get(session, license_id))


@router.patch("/api/licenses/{license_id}")
def update_license(
    license_id: RowId,
    data: LicenseUpdate,
    session: Session,
    admin: Admin,
    settings: AppSettings,
    now: Now,
) -> LicenseRead:
    lic = service.get(session, license_id, for_update=True)
    changes.update_license(session, lic, data, actor=admin, tz=settings.timezone, now=now)
    return service.to_read(lic)


@router.get("/api/organizations/{org_id}/licenses")
def organization_licenses(org_id: RowId, session: Session, _viewer: Viewer) -> list[LicenseRead]:
    return [service.to_read(lic) for lic in service.for_organization(session, org_id)]
