"""Licenses: create, change, find the one in force, and adjust credits with a trace."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tokenledger.audit import service as audit
from tokenledger.db import Reader, driver_read, execute_rows, read_rows
from tokenledger.errors import DomainError, not_found
from tokenledger.licenses.models import (
    LICENSE_TERMS_COLUMNS,
    CreditAdjustment,
    License,
    LicenseTerms,
    LicenseTermsRow,
)
from tokenledger.licenses.schemas import LicenseCreate, LicenseRead, LicenseUpdate
from tokenledger.money import (
    credits_to_micro,
    micro_to_credits,
    nano_to_usd,
    usd_to_nano,
)
from tokenledger.organizations import service as organizations


def to_read(lic: License) -> LicenseRead:
    return LicenseRead(
        id=lic.id,
        organization_id=lic.organization_id,
        status=lic.status,
        # In UTC, as read back from the database, also right after a write with an offset.
        valid_from=lic.valid_from.astimezone(UTC),
        valid_until=lic.valid_until.astimezone(UTC) if lic.valid_until else None,
        credits_total=micro_to_credits(lic.credits_total_micro),
        credits_used=micro_to_credits(lic.credits_used_micro),
        credits_remaining=micro_to_credits(lic.credits_total_micro - lic.credits_used_micro),
        cost_per_credit=nano_to_usd(lic.cost_per_credit_nano),
        token_budget_usd=(
            nano_to_usd(lic.token_budget_nano) if lic.token_budget_nano is not None else None
        ),
        budget_period=lic.budget_period,
        budget_warning_percent=lic.budget_warning_percent,
        enforcement=lic.enforcement,
        created_at=lic.created_at,
        updated_at=lic.updated_at,
    )


def snapshot(lic: License) -> dict[str, Any]:
    """The audited view of a license: its API shape, as JSON-safe values."""
    data = to_read(lic).model_dump(mode="json", exclude={"created_at", "updated_at"})
    return data


def get(session: Session, license_id: int, *, for_update: bool = False) -> License:
    """A license; for_update locks it, after its organization (db.py's lock order)."""
    query = select(License).where(License.id == license_id)
    if for_update:
        org_id = session.scalar(select(License.organization_id).where(License.id == license_id))
        if org_id is not None:
            organizations.lock(session, [org_id])
        query = query.with_for_update().execution_options(populate_existing=True)
    lic = session.scalar(query)
    if lic is None:
        raise not_found("license", license_id)
    return lic


def for_organization(session: Session, org_id: int) -> list[License]:
    organizations.get(session, org_id)
    return list(
        session.scalars(
            select(License).where(License.organization_id == org_id).order_by(License.id.desc())
        ).all()
    )


def active_for(session: Session, org_id: int) -> License | None:
    return session.scalar(
        select(License).where(License.organization_id == org_id, License.status == "active")
    )


Terms = TypeVar("Terms", bound=LicenseTerms)


def in_force_at(licenses: Sequence[Terms], at: datetime) -> Terms | None:
    """The license an event at `at` belongs to: its validity contains `at`, not cancelled.

    When validities overlap, the one that began last wins (ties: the newest license).
    """
    best: Terms | None = None
    for lic in licenses:
        if lic.status == "cancelled" or lic.valid_from > at:
            continue
        if lic.valid_until is not None and at >= lic.valid_until:
            continue
        if best is None or (lic.valid_from, lic.id) > (best.valid_from, best.id):
            best = lic
    return best


_LICENSES = cast(Table, License.__table__)
# Both built once: a statement made anew for each call has its cache key computed anew
# too (SQLAlchemy keeps it per statement object), a fifth of the query's time. Both go
# straight to SQLite's driver (db.read_rows): every group of the writer reads them.
_CANDIDATES = driver_read(
    select(*(_LICENSES.c[name] for name in LICENSE_TERMS_COLUMNS))
    .where(_LICENSES.c.organization_id.in_(bindparam("orgs", expanding=True)))
    .where(_LICENSES.c.status != "cancelled")
    .order_by(_LICENSES.c.id)
)
_CANDIDATES_LOCKED = driver_read(_CANDIDATES.with_for_update())


def candidates_for(
    session: Session, org_ids: list[int], *, lock: bool = False
) -> dict[int, list[LicenseTermsRow]]:
    """Every non-cancelled license of these organizations, in one query, as their terms.

    With lock, the rows are locked in id order (PostgreSQL; SQLite's write transaction
    already excludes other writers), so concurrent batches cannot deadlock on them.
    """
    result: dict[int, list[LicenseTermsRow]] = {org_id: [] for org_id in org_ids}
    if not org_ids:
        return result
    query = _CANDIDATES_LOCKED if lock else _CANDIDATES
    for row in read_rows(session, query, {"orgs": org_ids}):
        lic = LicenseTermsRow(*row)
        result[lic.organization_id].append(lic)
    return result


_TERMS = select(*(_LICENSES.c[name] for name in LICENSE_TERMS_COLUMNS)).where(
    _LICENSES.c.status.in_(("active", "suspended"))
)


def terms_in_force(
    connection: Reader, org_ids: Iterable[int] | None = None, limit: int | None = None
) -> dict[int, list[LicenseTermsRow]]:
    """The active and suspended licenses of these organizations (None: of all), newest first.

    These are the licenses that may govern an organization (budgets.service.governing).
    With a limit, at most that many rows are read (the caller tells when there were more).
    """
    query = _TERMS.order_by(_LICENSES.c.id.desc())
    if org_ids is not None:
        query = query.where(_LICENSES.c.organization_id.in_(sorted(set(org_ids))))
    if limit is not None:
        query = query.limit(limit)
    by_org: dict[int, list[LicenseTermsRow]] = defaultdict(list)
    for row in connection.execute(query):
        terms = LicenseTermsRow(*row)
        by_org[terms.organization_id].append(terms)
    return dict(by_org)


def _one_active_conflict() -> DomainError:
    return DomainError(
        409, "active_license_exists", "this organization already has an active license"
    )


def _organization_archived() -> DomainError:
    return DomainError(409, "organization_archived", "the organization is archived")


def _flush(session: Session) -> None:
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError as exc:
        # PostgreSQL names the index; SQLite names only the column of a unique index.
        message = str(exc.orig)
        if "one_active" in message or "UNIQUE constraint failed: licenses." in message:
            raise _one_active_conflict() from exc
        raise DomainError(422, "invalid_license", "the license violates a constraint") from exc


def create(
    session: Session, data: LicenseCreate, now: datetime, *, actor: audit.Actor | None
) -> License:
    """A license, valid from now unless data says when, audited (actor None: seed data in
    tests is not a change by anyone). A refusal writes nothing. A new license has no alerts
    to re-arm."""
    org = organizations.get(session, data.organization_id)
    if org.archived_at is not None:
        raise _organization_archived()
    if data.status == "active" and active_for(session, org.id) is not None:
        raise _one_active_conflict()
    lic = License(
        organization_id=org.id,
        status=data.status,
        valid_from=data.valid_from or now,
        valid_until=data.valid_until,
        credits_total_micro=credits_to_micro(data.credits_total),
        cost_per_credit_nano=usd_to_nano(data.cost_per_credit),
        token_budget_nano=(
            usd_to_nano(data.token_budget_usd) if data.token_budget_usd is not None else None
        ),
        budget_period=data.budget_period,
        budget_warning_percent=data.budget_warning_percent,
        enforcement=data.enforcement,
        credits_used_micro=0,
    )
    if lic.valid_until is not None and lic.valid_until <= lic.valid_from:
        raise _invalid_validity()
    session.add(lic)
    _flush(session)
    if actor is not None:
        audit.record_change(
            session, actor, "license.create", "license", lic.id, before=None, after=snapshot(lic)
        )
    return lic


def _invalid_validity() -> DomainError:
    return DomainError(422, "invalid_validity", "valid_until must be after valid_from")


def check_update(session: Session, lic: License, data: LicenseUpdate) -> None:
    """Raise what update_license would refuse, before anything is changed."""
    fields = data.model_fields_set
    if "status" in fields and data.status == "active" and lic.status != "active":
        # As at creation: an archived organization gets no active license.
        if organizations.get(session, lic.organization_id).archived_at is not None:
            raise _organization_archived()
        other = active_for(session, lic.organization_id)
        if other is not None and other.id != lic.id:
            raise _one_active_conflict()
    valid_from = (
        data.valid_from
        if "valid_from" in fields and data.valid_from is not None
        else lic.valid_from
    )
    valid_until = data.valid_until if "valid_until" in fields else lic.valid_until
    if valid_until is not None and valid_until <= valid_from:
        raise _invalid_validity()


def update_license(session: Session, lic: License, data: LicenseUpdate, now: datetime) -> License:
    """Change a license's terms (checked first: a refusal changes nothing). Its audit entry
    and the alerts it re-arms are budgets.changes.update_license's, which calls this."""
    check_update(session, lic, data)
    fields = data.model_fields_set
    if "status" in fields and data.status is not None:
        lic.status = data.status
    if "valid_from" in fields and data.valid_from is not None:
        lic.valid_from = data.valid_from
    if "valid_until" in fields:
        lic.valid_until = data.valid_until
    apply_budget(
        lic,
        credits_total=data.credits_total if "credits_total" in fields else None,
        cost_per_credit=data.cost_per_credit if "cost_per_credit" in fields else None,
        token_budget_usd=data.token_budget_usd,
        token_budget_given="token_budget_usd" in fields,
        budget_warning_percent=data.budget_warning_percent,
    )
    if data.budget_period is not None:
        lic.budget_period = data.budget_period
    if data.enforcement is not None:
        lic.enforcement = data.enforcement
    lic.updated_at = now
    _flush(session)
    return lic


def apply_budget(
    lic: License,
    *,
    credits_total: Any,
    cost_per_credit: Any,
    token_budget_usd: Any,
    token_budget_given: bool,
    budget_warning_percent: int | None,
) -> None:
    """Set the budget fields that were given (the token budget may be set to null)."""
    if credits_total is not None:
        lic.credits_total_micro = credits_to_micro(credits_total)
    if cost_per_credit is not None:
        lic.cost_per_credit_nano = usd_to_nano(cost_per_credit)
    if token_budget_given:
        lic.token_budget_nano = (
            usd_to_nano(token_budget_usd) if token_budget_usd is not None else None
        )
    if budget_warning_percent is not None:
        lic.budget_warning_percent = budget_warning_percent


def adjust_credits_used(
    session: Session, lic: License, target_micro: int, actor: str, reason: str
) -> CreditAdjustment:
    """Move credits_used to a target through an explicit adjustment entry (atomic delta)."""
    delta = target_micro - lic.credits_used_micro
    adjustment = CreditAdjustment(license_id=lic.id, delta_micro=delta, reason=reason, actor=actor)
    session.add(adjustment)
    session.execute(
        update(License)
        .where(License.id == lic.id)
        .values(credits_used_micro=License.credits_used_micro + delta)
    )
    session.refresh(lic)
    return adjustment


_ADD_CREDITS = (
    update(_LICENSES)
    .where(_LICENSES.c.id == bindparam("key"))
    .values(
        credits_used_micro=_LICENSES.c.credits_used_micro + bindparam("delta"),
        # Usage is no change of the license's terms: updated_at stays.
        updated_at=_LICENSES.c.updated_at,
    )
)


def add_credits_used(session: Session, credits: dict[int, int]) -> None:
    """Add each license's credit difference to its credits_used, atomically, in id order."""
    deltas = [{"key": lid, "delta": delta} for lid, delta in sorted(credits.items()) if delta]
    if not deltas:
        return
    execute_rows(session, _ADD_CREDITS, deltas)
