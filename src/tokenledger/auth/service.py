"""Admin accounts, login throttling and ingest keys."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from tokenledger.audit import service as audit
from tokenledger.auth.models import ROLES, AdminUser, ApiKey, LoginAttempt
from tokenledger.auth.passwords import hash_password, password_problem, verify_password
from tokenledger.db import MAX_ROW_ID, utcnow
from tokenledger.errors import DomainError
from tokenledger.organizations.models import Organization

API_KEY_PREFIX = "tl_"
EMAIL_MAX_LENGTH = 320  # the width of the email columns


def normalize_email(email: str) -> str:
    return email.strip().lower()


def create_admin(
    session: Session, email: str, password: str, role: str = "admin", *, actor: audit.Actor | None
) -> AdminUser:
    """A new account, audited (actor None: the first admin, which nobody creates, and test
    fixtures); a refusal writes nothing."""
    email = normalize_email(email)
    if "@" not in email or len(email) > EMAIL_MAX_LENGTH:
        raise DomainError(422, "invalid_email", f"not an email address: {email!r}")
    if role not in ROLES:
        raise DomainError(422, "invalid_role", f"role must be one of {', '.join(ROLES)}")
    problem = password_problem(password, email)
    if problem:
        raise DomainError(422, "weak_password", problem)
    if session.scalar(select(AdminUser.id).where(AdminUser.email == email)) is not None:
        raise DomainError(409, "admin_exists", f"an admin with email {email} already exists")
    user = AdminUser(email=email, password_hash=hash_password(password), role=role)
    session.add(user)
    session.flush()
    if actor is not None:
        audit.record_change(
            session,
            actor,
            "admin_user.create",
            "admin_user",
            user.id,
            before=None,
            after={"email": user.email, "role": user.role},
        )
    return user


def count_admins(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(AdminUser)) or 0


@dataclass(frozen=True, slots=True)
class Throttle:
    max_failures: int
    window_seconds: int


def check_login_throttle(
    session: Session, email: str, client_address: str, throttle: Throttle
) -> None:
    """429 with Retry-After when the account or the address failed too often lately."""
    # The real clock, not the app's: the window is real seconds between real attempts.
    since = utcnow() - timedelta(seconds=throttle.window_seconds)
    for column, value, limit in (
        (LoginAttempt.email, email, throttle.max_failures),
        (LoginAttempt.client_address, client_address, throttle.max_failures * 4),
    ):
        count, oldest = session.execute(
            select(func.count(), func.min(LoginAttempt.created_at)).where(
                column == value,
                LoginAttempt.created_at >= since,
                LoginAttempt.succeeded.is_(False),
            )
        ).one()
        if count >= limit:
            oldest_at = oldest.replace(tzinfo=utcnow().tzinfo) if oldest else utcnow()
            retry = throttle.window_seconds - int((utcnow() - oldest_at).total_seconds())
            raise DomainError(
                429,
                "too_many_attempts",
                "too many failed logins; try again later",
                headers={"Retry-After": str(max(1, retry))},
            )


def authenticate(session: Session, email: str, password: str) -> AdminUser | None:
    """The active user with these credentials, or None (in the same time either way)."""
    email = normalize_email(email)
    user = session.scalar(select(AdminUser).where(AdminUser.email == email))
    ok = verify_password(user.password_hash if user else None, password)
    if not ok or user is None or user.disabled_at is not None:
        return None
    return user


def revoke_tokens(session: Session, user_id: int) -> None:
    session.execute(
        update(AdminUser)
        .where(AdminUser.id == user_id)
        .values(token_version=AdminUser.token_version + 1)
    )


FAILURES_KEPT = timedelta(days=1)


def record_login_failure(session: Session, email: str, client_address: str) -> None:
    """Keep a failure for throttling; failures older than a day go, so the table stays small."""
    session.execute(delete(LoginAttempt).where(LoginAttempt.created_at < utcnow() - FAILURES_KEPT))
    session.add(LoginAttempt(email=email, client_address=client_address, succeeded=False))


def _hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_api_key(
    session: Session, name: str, org_slug: str | None, *, actor: audit.Actor | None
) -> tuple[ApiKey, str]:
    """A new ingest key, audited (actor None: test fixtures and demo data); the secret is
    returned once and only its hash is stored. A refusal writes nothing."""
    name = name.strip()
    if not name or len(name) > 200:
        raise DomainError(422, "invalid_name", "an API key needs a name of at most 200 characters")
    organization_id = None
    if org_slug is not None:
        organization_id = session.scalar(
            select(Organization.id).where(Organization.slug == org_slug)
        )
        if organization_id is None:
            raise DomainError(
                404, "organization_not_found", f"no organization with slug {org_slug!r}"
            )
    secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        name=name, prefix=secret[:10], key_hash=_hash_key(secret), organization_id=organization_id
    )
    session.add(key)
    session.flush()
    if actor is not None:
        audit.record_change(
            session,
            actor,
            "api_key.create",
            "api_key",
            key.id,
            before=None,
            after={"name": key.name, "organization": org_slug},
        )
    return key, secret


def list_api_keys(session: Session, organization_id: int | None = None) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.id)
    if organization_id is not None:
        query = query.where(ApiKey.organization_id == organization_id)
    return list(session.scalars(query).all())


def revoke_api_key(session: Session, key_id: int, *, actor: audit.Actor, now: datetime) -> ApiKey:
    """Revoke an ingest key, audited; revoking it again changes nothing."""
    key = session.get(ApiKey, key_id) if 1 <= key_id <= MAX_ROW_ID else None
    if key is None:
        raise DomainError(404, "api_key_not_found", f"no API key with id {key_id}")
    if key.revoked_at is None:
        key.revoked_at = now
    audit.record_change(
        session,
        actor,
        "api_key.revoke",
        "api_key",
        key.id,
        before={"revoked": False},
        after={"revoked": True},
    )
    return key


def resolve_api_key(session: Session, secret: str) -> ApiKey | None:
    """The live key for a presented secret, or None."""
    return resolve_api_keys(session, [secret]).get(secret)


def resolve_api_keys(session: Session, secrets: Sequence[str]) -> dict[str, ApiKey]:
    """The live keys (not revoked) among presented secrets, by secret: one query per
    thousand secrets."""
    by_hash = {_hash_key(secret): secret for secret in secrets if secret.startswith(API_KEY_PREFIX)}
    hashes = list(by_hash)
    found: dict[str, ApiKey] = {}
    for start in range(0, len(hashes), 1000):
        chunk = hashes[start : start + 1000]
        for key in session.scalars(select(ApiKey).where(ApiKey.key_hash.in_(chunk))):
            if key.revoked_at is None:
                found[by_hash[key.key_hash]] = key
    return found


def touch_api_key(session: Session, key_id: int, now: datetime) -> None:
    session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now))


def list_admins(session: Session) -> list[AdminUser]:
    return list(session.scalars(select(AdminUser).order_by(AdminUser.email)).all())


def set_disabled(
    session: Session, user_id: int, disabled: bool, *, actor: audit.Actor, now: datetime
) -> AdminUser:
    """Disable an account (its sessions end at once) or enable it again, audited."""
    user = session.get(AdminUser, user_id) if 1 <= user_id <= MAX_ROW_ID else None
    if user is None:
        raise DomainError(404, "admin_not_found", f"no admin user with id {user_id}")
    if disabled and user.disabled_at is None:
        user.disabled_at = now
        user.token_version += 1
    elif not disabled:
        user.disabled_at = None
    session.flush()
    audit.record_change(
        session,
        actor,
        "admin_user.disable" if disabled else "admin_user.enable",
        "admin_user",
        user.id,
        before={"disabled": not disabled},
        after={"disabled": disabled},
    )
    return user
