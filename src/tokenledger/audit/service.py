"""Write and read audit entries; writes join the caller's transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tokenledger.audit.models import AuditEntry


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    entity_type: str,
    entity_id: object,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    client_address: str | None,
) -> None:
    session.add(
        AuditEntry(
            actor=actor,
            action=action,
            entity_type=entity_type,
            entity_id=str(entity_id),
            before=before,
            after=after,
            client_address=client_address,
        )
    )


def list_entries(
    session: Session,
    *,
    entity_type: str | None,
    entity_id: str | None,
    limit: int,
    offset: int,
    actor: str | None = None,
) -> tuple[list[AuditEntry], int]:
    query = select(AuditEntry)
    if actor:
        query = query.where(AuditEntry.actor == actor)
    if entity_type:
        query = query.where(AuditEntry.entity_type == entity_type)
    if entity_id:
        query = query.where(AuditEntry.entity_id == entity_id)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(AuditEntry.id.desc()).limit(limit).offset(offset)).all()
    return list(rows), total


class Actor(Protocol):
    """Whoever made a change: an admin principal (API, pages) or an Operator."""

    @property
    def email(self) -> str: ...

    @property
    def address(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Operator:
    """An actor that is not a signed-in admin: the command line ("cli"), demo data."""

    email: str
    address: str | None = None


def record_change(
    session: Session,
    by: Actor,
    action: str,
    entity_type: str,
    entity_id: object,
    *,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    """record() for a change made by an actor; a no-op change is not one."""
    if before is not None and before == after:
        return
    record(
        session,
        actor=by.email,
        action=action,
        entity_type=entity_type,
        entity_id=entity_id,
        before=before,
        after=after,
        client_address=by.address,
    )


def entity_types(session: Session) -> list[str]:
    """The kinds of entity the log holds entries for, to filter by."""
    return list(
        session.scalars(
            select(AuditEntry.entity_type).distinct().order_by(AuditEntry.entity_type)
        ).all()
    )
