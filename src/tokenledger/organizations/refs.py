"""Which organization a reference means, for a key: one rule, for the hot cache and sessions.

A reference is a slug or an id's decimal text (ASCII digits, an id a row can have); a slug
wins over an id of the same text. A key of one organization acts for it alone; a service
key (no organization of its own) must name one. The lookup is the hot cache's
(HotReads.organizations) on the ingest routes, or in_session's elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from tokenledger.db import MAX_ROW_ID
from tokenledger.errors import DomainError
from tokenledger.organizations.models import Organization


@dataclass(frozen=True, slots=True)
class OrgRef:
    """What ingestion needs of an organization."""

    id: int
    slug: str


# Organizations by slug and by id, for the references given (unknown ones absent).
Lookup = Callable[[set[str], set[int]], tuple[dict[str, OrgRef], dict[int, OrgRef]]]


def id_of(ref: str) -> int | None:
    """The id a reference may mean; None for text (or numbers) no organization id can be."""
    if not (ref.isascii() and ref.isdigit()):  # "²".isdigit() is true
        return None
    value = int(ref)
    return value if 1 <= value <= MAX_ROW_ID else None


def in_session(session: Session) -> Lookup:
    """Organizations read in this session (for callers without the hot cache)."""

    def lookup(slugs: set[str], ids: set[int]) -> tuple[dict[str, OrgRef], dict[int, OrgRef]]:
        conditions = []
        if slugs:
            conditions.append(Organization.slug.in_(slugs))
        if ids:
            conditions.append(Organization.id.in_(ids))
        if not conditions:
            return {}, {}
        refs = [
            OrgRef(org_id, slug)
            for org_id, slug in session.execute(
                select(Organization.id, Organization.slug).where(or_(*conditions))
            )
        ]
        return (
            {ref.slug: ref for ref in refs if ref.slug in slugs},
            {ref.id: ref for ref in refs if ref.id in ids},
        )

    return lookup


@dataclass(frozen=True, slots=True)
class Refused:
    """A reference a key may not use: why (required, gone, unknown, mismatch) and where."""

    index: int
    reason: str
    ref: str | None

    def error(self, ref: object) -> DomainError:
        """As a request's one reference (`ref` as the caller gave it)."""
        if self.reason == "required":
            return DomainError(
                422, "organization_required", "a service key must name the organization"
            )
        if self.reason == "gone":
            return DomainError(404, "organization_not_found", "the key's organization is gone")
        if self.reason == "unknown":
            return DomainError(404, "organization_not_found", f"unknown organization {ref!r}")
        return DomainError(403, "organization_mismatch", "this key belongs to another organization")


def resolve(
    lookup: Lookup, key_org_id: int | None, refs: Sequence[str | None]
) -> list[OrgRef | Refused]:
    """The organization each reference means for this key (None: the key's own), or why
    the key may not use it; all looked up at once."""
    named = {ref for ref in refs if ref is not None}
    ids = {org_id for org_id in map(id_of, named) if org_id is not None}
    if key_org_id is not None:
        ids.add(key_org_id)
    by_slug, by_id = lookup(named, ids) if named or ids else ({}, {})
    found: list[OrgRef | Refused] = []
    for index, ref in enumerate(refs):
        if ref is None:
            own = by_id.get(key_org_id) if key_org_id is not None else None
            if own is None:
                found.append(Refused(index, "required" if key_org_id is None else "gone", ref))
            else:
                found.append(own)
            continue
        org = by_slug.get(ref)
        if org is None and (org_id := id_of(ref)) is not None:
            org = by_id.get(org_id)
        if org is None:
            found.append(Refused(index, "unknown", ref))
        elif key_org_id is not None and org.id != key_org_id:
            found.append(Refused(index, "mismatch", ref))
        else:
            found.append(org)
    return found


def for_key(lookup: Lookup, key_org_id: int | None, ref: str | int | None) -> OrgRef:
    """The organization one reference of a request means for this key, or the DomainError."""
    (found,) = resolve(lookup, key_org_id, [None if ref is None else str(ref)])
    if isinstance(found, Refused):
        raise found.error(ref)
    return found


def for_reader(lookup: Lookup, key_org_id: int | None, ref: str | int | None) -> OrgRef:
    """for_key's rule for reading (the tenant routes): a key of one organization that names
    another is refused the same way whether that other exists or not (403), so that a
    tenant learns nothing of other organizations' slugs or ids."""
    if key_org_id is not None and ref is not None:
        own = for_key(lookup, key_org_id, None)
        if str(ref) not in (own.slug, str(own.id)):
            raise DomainError(
                403, "organization_mismatch", "this key belongs to another organization"
            )
        return own
    return for_key(lookup, key_org_id, ref)


def organization_for_key(
    session: Session, key_org_id: int | None, ref: str | int | None
) -> Organization:
    """for_key's organization, read in this session."""
    org = session.get(Organization, for_key(in_session(session), key_org_id, ref).id)
    assert org is not None  # found in this very transaction
    return org


def by_slug_or_id(session: Session, ref: str) -> Organization | None:
    """The organization a reference means (no key involved), or None."""
    if not ref.isprintable():  # no slug has control characters; PostgreSQL refuses NUL
        return None
    (found,) = resolve(in_session(session), None, [ref])
    return None if isinstance(found, Refused) else session.get(Organization, found.id)
