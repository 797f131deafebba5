"""Signing in: credentials checked with throttling, and the browser's session cookies."""

from __future__ import annotations

from fastapi import Request, Response

from tokenledger.auth import service
from tokenledger.auth.tokens import issue_token
from tokenledger.config import Settings
from tokenledger.db import Database
from tokenledger.deps import CSRF_COOKIE, SESSION_COOKIE, client_address
from tokenledger.errors import DomainError


def login(
    request: Request, database: Database, settings: Settings, email: str, password: str
) -> tuple[str, str, int]:
    """Check credentials with throttling; (token, csrf, expires_in) or a DomainError.

    The slow password check runs in a read transaction: on SQLite a write transaction
    would hold the one write lock, and every login attempt would stall ingestion.
    """
    address = client_address(request)
    # No account has a longer email; cut, the failure still fits the throttling table.
    email = service.normalize_email(email)[: service.EMAIL_MAX_LENGTH]
    throttle = service.Throttle(settings.login_max_failures, settings.login_window_seconds)
    with database.session(write=False) as session:
        service.check_login_throttle(session, email, address, throttle)
        user = service.authenticate(session, email, password)
        user_id = user.id if user else None
        version = user.token_version if user else 0
    if user_id is None:
        with database.session(write=True) as session:
            service.record_login_failure(session, email, address)
        raise DomainError(401, "invalid_credentials", "wrong email or password")
    minutes = settings.access_token_minutes
    token, claims = issue_token(settings.signing_key(), user_id, minutes, version)
    return token, claims.csrf, minutes * 60


def set_session_cookies(
    response: Response, request: Request, settings: Settings, token: str, csrf: str, max_age: int
) -> None:
    secure = settings.cookie_secure
    if secure is None:
        secure = request.url.scheme == "https"
    response.set_cookie(
        SESSION_COOKIE, token, max_age=max_age, httponly=True, samesite="lax", secure=secure
    )
    # Readable by the page's own scripts, which echo it in the X-CSRF-Token header.
    response.set_cookie(
        CSRF_COOKIE, csrf, max_age=max_age, httponly=False, samesite="lax", secure=secure
    )
