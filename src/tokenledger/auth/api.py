"""Login: OAuth2 password form to a bearer token, plus the browser's session cookie."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel

from tokenledger.auth import service
from tokenledger.auth.tokens import issue_token
from tokenledger.config import Settings
from tokenledger.db import Database
from tokenledger.deps import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    AppSettings,
    Session,
    Viewer,
    client_address,
    get_database,
)
from tokenledger.errors import DomainError

router = APIRouter(prefix="/api/auth", tags=["auth"])


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


class Me(BaseModel):
    id: int
    email: str
    role: str


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


@router.post("/token")
def token(
    request: Request,
    response: Response,
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    settings: AppSettings,
) -> TokenResponse:
    access_token, csrf, expires_in = login(
        request, get_database(request), settings, form.username, form.password
    )
    set_session_cookies(response, request, settings, access_token, csrf, expires_in)
    return TokenResponse(access_token=access_token, expires_in=expires_in)


@router.post("/logout", status_code=204)
def logout(session: Session, viewer: Viewer) -> Response:
    """End every session of this account: its tokens stop working, here and elsewhere."""
    service.revoke_tokens(session, viewer.user_id)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE)
    response.delete_cookie(CSRF_COOKIE)
    return response


@router.get("/me")
def me(viewer: Viewer) -> Me:
    return Me(id=viewer.user_id, email=viewer.email, role=viewer.role)
