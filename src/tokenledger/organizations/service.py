"""Organizations: create, find, change, archive, each change with its audit entry."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tokenledger.audit import service as audit
from tokenledger.errors import DomainError, not_found
from tokenledger.models import Base  # every table: delete() asks each one that refers here
from tokenledger.organizations.models import Organization
from tokenledger.organizations.schemas import OrganizationCreate, OrganizationUpdate


def slugify(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")
    return slug[:64].strip("-") or "org"


def snapshot(org: Organization) -> dict[str, Any]:
    return {
        "name": org.name,
        "slug": org.slug,
        "archived_at": org.archived_at.isoformat() if org.archived_at else None,
    }


def get(session: Session, org_id: int) -> Organization:
    org = session.get(Organization, org_id)
    if org is None:
        raise not_found("organization", org_id)
    return org


def lock(session: Session, org_ids: Iterable[int]) -> None:
    """Lock these organizations' rows, in id order: the first lock of every write
    transaction that changes what an organization owns (the lock order is in db.py).

    FOR NO KEY UPDATE: writers of one organization take turns, while inserts that only
    refer to it (a new license, an alert) go on. SQLite's one writer needs no row lock.
    """
    ids = sorted(set(org_ids))
    if not ids or session.get_bind().dialect.name != "postgresql":
        return
    session.execute(
        select(Organization.id)
        .where(Organization.id.in_(ids))
        .order_by(Organization.id)
        .with_for_update(key_share=True)
    ).all()


def _slug_taken(session: Session, slug: str, except_id: int | None = None) -> bool:
    query = select(Organization.id).where(Organization.slug == slug)
    if except_id is not None:
        query = query.where(Organization.id != except_id)
    return session.scalar(query) is not None


def _conflict(slug: str) -> DomainError:
    return DomainError(409, "slug_taken", f"an organization with slug {slug!r} exists already")


def create(
    session: Session, data: OrganizationCreate, *, actor: audit.Actor | None
) -> Organization:
    """A new organization, audited (actor None: seed data, demo or tests, is not a change by
    anyone); a slug in use is a 409 and writes nothing."""
    slug = data.slug or slugify(data.name)
    if _slug_taken(session, slug):
        raise _conflict(slug)
    org = Organization(name=data.name.strip(), slug=slug)
    session.add(org)
    try:
        # A savepoint, so that a racing insert of the same slug becomes a 409, not a 500.
        with session.begin_nested():
            session.flush()
    except IntegrityError as exc:
        raise _conflict(slug) from exc
    if actor is not None:
        audit.record_change(
            session,
            actor,
            "organization.create",
            "organization",
            org.id,
            before=None,
            after=snapshot(org),
        )
    return org


def update(
    session: Session,
    org: Organization,
    data: OrganizationUpdate,
    *,
    actor: audit.Actor,
    now: datetime,
) -> Organization:
    """Change an organization, audited; a slug in use is a 409 and changes nothing."""
    # Checked before anything changes: a refused update leaves the row as it was.
    if (
        data.slug is not None
        and data.slug != org.slug
        and _slug_taken(session, data.slug, except_id=org.id)
    ):
        raise _conflict(data.slug)
    before = snapshot(org)
    if data.name is not None:
        org.name = data.name.strip()
    if data.slug is not None:
        org.slug = data.slug
    if data.archived is not None:
        org.archived_at = (org.archived_at or now) if data.archived else None
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError as exc:
        raise _conflict(org.slug) from exc
    audit.record_change(
        session,
        actor,
        "organization.update",
        "organization",
        org.id,
        before=before,
        after=snapshot(org),
    )
    return org


def search(
    session: Session, query: str | None, limit: int, offset: int, include_archived: bool = True
) -> tuple[list[Organization], int]:
    stmt = select(Organization)
    if query:
        # The query is plain text: its LIKE wildcards match only themselves.
        escaped = re.sub(r"([\\%_])", r"\\\1", query.lower())
        pattern = f"%{escaped}%"
        stmt = stmt.where(
            or_(
                func.lower(Organization.name).like(pattern, escape="\\"),
                Organization.slug.like(pattern, escape="\\"),
            )
        )
    if not include_archived:
        stmt = stmt.where(Organization.archived_at.is_(None))
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    order = (func.lower(Organization.name), Organization.id)
    rows = session.scalars(stmt.order_by(*order).limit(limit).offset(offset))
    return list(rows.all()), total


def delete(session: Session, org: Organization, *, actor: audit.Actor) -> None:
    """Delete an organization that never had anything, audited; one with history is archived
    instead (a 409 that deletes nothing).

    History is any row that refers to it (usage, rollups, licenses, keys, runs, holds,
    alerts): every table with a foreign key to organizations is asked, so that a table
    added later cannot turn the delete into a foreign key error.
    """
    for table in Base.metadata.sorted_tables:
        for key in table.foreign_keys:
            # A row that goes with the organization (ON DELETE CASCADE, as the portal's link
            # generation) is not history.
            if key.column.table.name != Organization.__tablename__ or key.ondelete == "CASCADE":
                continue
            if session.execute(select(key.parent).where(key.parent == org.id).limit(1)).first():
                raise DomainError(
                    409,
                    "organization_has_history",
                    "this organization has usage, licenses, keys or holds: archive it instead "
                    '(PATCH {"archived": true})',
                )
    before = snapshot(org)
    session.delete(org)
    session.flush()
    audit.record_change(
        session, actor, "organization.delete", "organization", org.id, before=before, after=None
    )
