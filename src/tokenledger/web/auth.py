"""Signing in and out, and the language and theme switches."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response

from tokenledger.auth import service as auth_service
from tokenledger.auth.login import login as check_login
from tokenledger.auth.login import set_session_cookies
from tokenledger.deps import CSRF_COOKIE, SESSION_COOKIE, get_database
from tokenledger.errors import DomainError
from tokenledger.web import forms, i18n
from tokenledger.web.common import (
    LANGUAGE_COOKIE,
    LOGIN_CSRF_COOKIE,
    SIGNED_IN_COOKIE,
    THEME_COOKIE,
    THEMES,
    YEAR,
    DbSession,
    Form,
    Page,
    PageRoute,
    PublicPage,
    ViewerPage,
    new_login_csrf,
    redirect,
    safe_next,
)
from tokenledger.web.i18n import N_

router = APIRouter(route_class=PageRoute, include_in_schema=False)

Next = Annotated[str, Query(max_length=2000)]


def _login_page(
    page: Page, next_path: str, email: str = "", error: str | None = None, status_code: int = 200
) -> Response:
    token = page.request.cookies.get(LOGIN_CSRF_COOKIE) or new_login_csrf()
    expired = page.request.query_params.get("expired") == "1"
    response = page.render(
        "login.html",
        status_code,
        login_csrf=token,
        next_path=safe_next(next_path),
        email=email,
        error=error,
        expired=expired and error is None,
    )
    response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", path="/login")
    return response


@router.get("/login")
def login_form(page: PublicPage, next: Next = "/") -> Response:
    return _login_page(page, next)


@router.post("/login")
def login_submit(request: Request, page: PublicPage, form: Form) -> Response:
    next_path = safe_next(forms.text(form, "next"))
    email = forms.text(form, "username")
    given = forms.text(form, "csrf_token")
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        message = N_("The form has expired. Reload the page and try again.")
        return _login_page(page, next_path, email, page._(message), 403)
    password = str(form.get("password", ""))
    settings = page.settings
    try:
        token, csrf, max_age = check_login(
            request, get_database(request), settings, email, password
        )
    except DomainError as exc:
        if exc.status == 429:
            retry = int((exc.headers or {}).get("Retry-After", "60"))
            minutes = max(1, (retry + 59) // 60)
            message = page._(
                N_("Too many failed sign-ins. Try again in %(minutes)s minutes."), minutes=minutes
            )
            response = _login_page(page, next_path, email, message, 429)
            response.headers["Retry-After"] = str(retry)
            return response
        message = page._(N_("Wrong email or password."))
        return _login_page(page, next_path, email, message, 401)
    response = RedirectResponse(next_path, status_code=303)
    set_session_cookies(response, request, settings, token, csrf, max_age)
    response.set_cookie(SIGNED_IN_COOKIE, "1", max_age=YEAR, httponly=True, samesite="lax")
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout")
def logout(page: ViewerPage, session: DbSession, form: Form) -> Response:
    assert page.principal is not None
    auth_service.revoke_tokens(session, page.principal.user_id)
    response = redirect("/login", flash=("info", N_("You are signed out."), {}))
    response.delete_cookie(SESSION_COOKIE)
    response.delete_cookie(CSRF_COOKIE)
    response.delete_cookie(SIGNED_IN_COOKIE)
    return response


@router.get("/lang/{language}")
def switch_language(language: str, next: Next = "/") -> Response:
    """Remember a language (a preference, not account data: no sign-in needed)."""
    response = RedirectResponse(safe_next(next), status_code=303)
    if language in i18n.LANGUAGES:
        response.set_cookie(LANGUAGE_COOKIE, language, max_age=YEAR, samesite="lax")
    return response


@router.get("/theme/{theme}")
def switch_theme(theme: str, next: Next = "/") -> Response:
    """Remember a theme: dark, light, or auto (the system's preference)."""
    response = RedirectResponse(safe_next(next), status_code=303)
    if theme in THEMES:
        response.set_cookie(THEME_COOKIE, theme, max_age=YEAR, samesite="lax")
    return response
