"""What every page shares: templates, the page route class, who is signed in, forms, flashes."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, unquote, urlencode

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session as OrmSession
from starlette.datastructures import FormData

from tokenledger.config import Settings
from tokenledger.deps import (
    SAFE_METHODS,
    SESSION_COOKIE,
    AppSettings,
    Principal,
    authenticate,
    get_session,
    now_of,
)
from tokenledger.errors import DomainError
from tokenledger.web import i18n
from tokenledger.web.i18n import N_

WEB_DIR = Path(__file__).parent
LANGUAGE_COOKIE = "tl_lang"
THEME_COOKIE = "tl_theme"
FLASH_COOKIE = "tl_flash"
LOGIN_CSRF_COOKIE = "tl_login_csrf"
# Outlives the session cookie, so that a lapsed session is told from never having signed in.
SIGNED_IN_COOKIE = "tl_signed_in"
THEMES = ("dark", "light", "auto")
DEFAULT_THEME = "dark"
YEAR = 365 * 24 * 3600

templates = Jinja2Templates(directory=WEB_DIR / "templates")
templates.env.trim_blocks = True
templates.env.lstrip_blocks = True


def language_of(request: Request) -> str:
    return i18n.negotiate(
        request.cookies.get(LANGUAGE_COOKIE), request.headers.get("accept-language")
    )


def theme_of(request: Request) -> str:
    theme = request.cookies.get(THEME_COOKIE, "")
    return theme if theme in THEMES else DEFAULT_THEME


def safe_next(target: str | None, default: str = "/") -> str:
    """A local path to go back to; anything else (another site, a scheme) is refused."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


@dataclass
class Page:
    """The request's page context: language, formatter, who is signed in."""

    request: Request
    settings: Settings
    principal: Principal | None
    language: str
    now: datetime
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def gettext(self) -> Callable[[str], str]:
        gettext: Callable[[str], str] = i18n.gettext_for(self.language)
        return gettext

    def _(self, message: str, **params: Any) -> str:
        text = self.gettext(message)
        return text % params if params else text

    def _n(self, singular: str, plural: str, count: int, **params: Any) -> str:
        text: str = i18n.translations(self.language).ngettext(singular, plural, count)
        return text % {"count": count, **params}

    @property
    def fmt(self) -> i18n.Formatter:
        return i18n.formatter(self.language, self.settings.timezone)

    def render(self, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        flash = read_flash(self.request)
        values = {
            "page": self,
            "_": self._,
            "_n": self._n,
            "fmt": self.fmt,
            "lang": self.language,
            "languages": i18n.LANGUAGE_NAMES,
            "theme": theme_of(self.request),
            "user": self.principal,
            "csrf": self.principal.csrf if self.principal else "",
            "path": self.request.url.path,
            "here": _here(self.request),
            "tz": self.settings.billing_timezone,
            "decimal": Decimal,
            "parse_iso": datetime.fromisoformat,
            "flash": [(kind, self._(message, **params)) for kind, message, params in flash],
            **self.extra,
            **context,
        }
        response = templates.TemplateResponse(
            self.request, template, values, status_code=status_code
        )
        if flash:
            response.delete_cookie(FLASH_COOKIE, path="/")
        return response


def _here(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def redirect(
    target: str, *, flash: tuple[str, str, dict[str, Any]] | None = None
) -> RedirectResponse:
    """303 See Other, with a message for the next page (kind, msgid, params)."""
    response = RedirectResponse(target, status_code=303)
    if flash is not None:
        kind, message, params = flash
        value = quote(json.dumps([kind, message, params], separators=(",", ":")))
        response.set_cookie(FLASH_COOKIE, value, max_age=60, httponly=True, samesite="lax")
    return response


def read_flash(request: Request) -> list[tuple[str, str, dict[str, Any]]]:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return []
    try:
        kind, message, params = json.loads(unquote(raw))
    except (ValueError, TypeError):
        return []
    # Only messages of our own catalog: a forged cookie shows nothing.
    if message not in FLASH_MESSAGES or not isinstance(params, dict):
        return []
    return [(str(kind), message, {str(k): str(v) for k, v in params.items()})]


FLASH_MESSAGES = {
    N_("Organization %(name)s created."),
    N_("Organization %(name)s saved."),
    N_("License created."),
    N_("License saved."),
    N_("Key %(name)s revoked."),
    N_("Webhook deleted."),
    N_("Price override for %(model)s saved."),
    N_("Price override for %(model)s removed."),
    N_("Account %(email)s created."),
    N_("Account %(email)s disabled."),
    N_("Account %(email)s enabled."),
    N_("You are signed out."),
    N_("Every portal link of %(name)s is revoked."),
    N_("%(account)s mapped."),
}


class LoginRequired(Exception):
    """The page needs a signed-in user; expired tells a lapsed session from none."""

    def __init__(self, expired: bool) -> None:
        super().__init__("sign in first")
        self.expired = expired


async def read_form(request: Request) -> FormData:
    if request.method in SAFE_METHODS:
        return FormData()
    return await request.form()


Form = Annotated[FormData, Depends(read_form)]


def page_session(request: Request) -> Iterator[OrmSession]:
    yield from get_session(request)


# The request's one transaction, as for the API (pages call the same services).
DbSession = Annotated[OrmSession, Depends(page_session, scope="function")]


def _principal(
    request: Request, session: OrmSession, settings: Settings, form: FormData
) -> Principal:
    had_session = SESSION_COOKIE in request.cookies or SIGNED_IN_COOKIE in request.cookies
    csrf = str(form.get("csrf_token", ""))
    try:
        return authenticate(request, session, settings, csrf)
    except DomainError as exc:
        if exc.status == 401:
            raise LoginRequired(expired=had_session) from exc
        if exc.code == "csrf_failed":
            raise DomainError(
                403, "csrf_failed", N_("The form has expired. Reload the page and try again.")
            ) from exc
        raise


def viewer_page(request: Request, session: DbSession, settings: AppSettings, form: Form) -> Page:
    principal = _principal(request, session, settings, form)
    return Page(request, settings, principal, language_of(request), now_of(request))


def admin_page(request: Request, session: DbSession, settings: AppSettings, form: Form) -> Page:
    page = viewer_page(request, session, settings, form)
    assert page.principal is not None
    if not page.principal.is_admin:
        raise DomainError(403, "admin_required", N_("This needs the admin role."))
    return page


def public_page(request: Request, settings: AppSettings) -> Page:
    return Page(request, settings, None, language_of(request), now_of(request))


ViewerPage = Annotated[Page, Depends(viewer_page)]
AdminPage = Annotated[Page, Depends(admin_page)]
PublicPage = Annotated[Page, Depends(public_page)]

# Messages a page may show as they are; any other error gets its status's general message.
PAGE_MESSAGES = {
    N_("The form has expired. Reload the page and try again."),
    N_("This needs the admin role."),
    N_("You cannot disable your own account."),
    N_("The address holds an invalid value."),
}
STATUS_MESSAGES = {
    403: N_("This needs the admin role."),
    404: N_("This page or record does not exist."),
    409: N_("This change conflicts with the current state. Reload the page and try again."),
    422: N_("The address holds an invalid value."),
}

ERROR_TITLES = {
    403: N_("Not allowed"),
    404: N_("Not found"),
    409: N_("Conflict"),
    422: N_("Invalid input"),
}


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    settings: Settings = request.app.state.settings
    page = Page(request, settings, None, language_of(request), now_of(request))
    title = ERROR_TITLES.get(status, N_("Something went wrong"))
    if message not in PAGE_MESSAGES:
        message = STATUS_MESSAGES.get(status, N_("Something went wrong"))
    return page.render(
        "error.html",
        status_code=status,
        title=page._(title),
        message=page._(message),
    )


class PageRoute(APIRoute):
    """A route that answers in HTML: a login redirect, or an error page.

    The security headers (CSP without inline script or style, no framing) come from the
    app's SecurityHeaders middleware, as for every response.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page_handler(request: Request) -> Response:
            try:
                response = await handler(request)
            except LoginRequired as exc:
                params = {"next": _here(request)}
                if exc.expired:
                    params["expired"] = "1"
                response = RedirectResponse(f"/login?{urlencode(params)}", status_code=303)
                if exc.expired:
                    response.delete_cookie(SESSION_COOKIE)
                    response.delete_cookie(SIGNED_IN_COOKIE)
            except DomainError as exc:
                response = error_page(request, exc.status, exc.message)
            except RequestValidationError:
                response = error_page(request, 422, N_("The address holds an invalid value."))
            return response

        return page_handler


def new_login_csrf() -> str:
    return secrets.token_urlsafe(24)
