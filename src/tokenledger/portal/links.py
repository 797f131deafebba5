"""Portal links: signed tokens naming an organization, expiring, revocable all at once.

A token is a JWT (HS256) with its own audience and a key derived from the secret key for
this use alone, so an admin token is never a portal token nor the other way round. It
carries the organization's link generation (portal/models.py); revoking raises the
generation in the database, so every link made before stops working in every worker at
once. Expiry is checked against the app's clock. Creation and revocation are audited
here, by the service that makes them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from sqlalchemy import select
from sqlalchemy.orm import Session

from tokenledger.audit import service as audit
from tokenledger.config import Settings
from tokenledger.db import MAX_ROW_ID, insert_for
from tokenledger.errors import DomainError
from tokenledger.organizations.models import Organization
from tokenledger.portal.models import PortalGeneration

AUDIENCE = "tokenledger-portal"
_ALGORITHM = "HS256"
# Longer than any token this module makes; anything longer is not read at all.
MAX_TOKEN_LENGTH = 1000


@dataclass(frozen=True, slots=True)
class PortalLink:
    token: str
    link_id: str
    expires_at: datetime


def _key(settings: Settings) -> str:
    return hmac.new(
        settings.signing_key().encode(), b"tokenledger portal links", hashlib.sha256
    ).hexdigest()


def generation(session: Session, org_id: int) -> int:
    found = session.scalar(
        select(PortalGeneration.generation).where(PortalGeneration.organization_id == org_id)
    )
    return int(found or 0)


def create_link(
    session: Session,
    org: Organization,
    by: audit.Actor,
    settings: Settings,
    now: datetime,
    hours: int | None = None,
) -> PortalLink:
    """A new link to the organization's portal, valid for `hours` (default: the setting)."""
    hours = settings.portal_link_hours if hours is None else hours
    if not 1 <= hours <= settings.portal_link_max_hours:
        raise DomainError(
            422,
            "invalid_lifetime",
            f"a portal link lasts 1 to {settings.portal_link_max_hours} hours",
        )
    # Whole seconds: what the token's exp can say.
    expires_at = (now + timedelta(hours=hours)).replace(microsecond=0)
    link_id = secrets.token_urlsafe(9)
    payload = {
        "aud": AUDIENCE,
        "sub": str(org.id),
        "gen": generation(session, org.id),
        "exp": int(expires_at.timestamp()),
        "jti": link_id,
    }
    token = jwt.encode(payload, _key(settings), algorithm=_ALGORITHM)
    audit.record_change(
        session,
        by,
        "portal_link.create",
        "organization",
        org.id,
        before=None,
        after={"link_id": link_id, "expires_at": expires_at.isoformat()},
    )
    return PortalLink(token=token, link_id=link_id, expires_at=expires_at)


def revoke_all(session: Session, org: Organization, by: audit.Actor, now: datetime) -> int:
    """Revoke every link of the organization made so far; the new generation."""
    insert = insert_for(session)
    table = PortalGeneration.__table__
    # One statement, so that two revocations at once both count (no read, then write).
    statement = (
        insert(table)
        .values(organization_id=org.id, generation=1, revoked_at=now)
        .on_conflict_do_update(
            index_elements=["organization_id"],
            set_={"generation": table.c.generation + 1, "revoked_at": now},
        )
        .returning(table.c.generation)
    )
    new_generation = int(session.execute(statement).scalar_one())
    session.expire_all()
    audit.record_change(
        session,
        by,
        "portal_link.revoke_all",
        "organization",
        org.id,
        before={"generation": new_generation - 1},
        after={"generation": new_generation},
    )
    return new_generation


def organization_of(
    session: Session, token: str, settings: Settings, now: datetime
) -> Organization | None:
    """The organization a token opens now; None when it is forged, expired or revoked."""
    if not token or len(token) > MAX_TOKEN_LENGTH or not token.isascii():
        return None
    try:
        claims = jwt.decode(
            token,
            _key(settings),
            algorithms=[_ALGORITHM],
            audience=AUDIENCE,
            # Expiry by the app's clock, below; PyJWT would read the real one.
            options={"verify_exp": False, "require": ["aud", "sub", "gen", "exp"]},
        )
        org_id, gen, exp = int(claims["sub"]), int(claims["gen"]), int(claims["exp"])
    except (jwt.PyJWTError, KeyError, TypeError, ValueError, OverflowError):
        return None
    if not 1 <= org_id <= MAX_ROW_ID:
        return None
    try:
        expires_at = datetime.fromtimestamp(exp, UTC)
    except (OverflowError, OSError, ValueError):
        return None
    if now >= expires_at or gen != generation(session, org_id):
        return None
    return session.get(Organization, org_id)


def portal_url(base_url: str, token: str) -> str:
    """The portal page a link's token opens, under the app's base URL."""
    return f"{base_url.rstrip('/')}/portal/{token}"
