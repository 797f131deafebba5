"""Login: OAuth2 password form to a bearer token, plus the browser's session cookie."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel

from tokenledger.auth import service
from tokenledger.auth.login import login, set_session_cookies
from tokenledger.deps import CSRF_COOKIE, SESSION_COOKIE, AppSettings, Session, Viewer, get_database

router = APIRouter(prefix="/api/auth", tags=["auth"])


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


class Me(BaseModel):
    id: int
    email: str
    role: str


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
