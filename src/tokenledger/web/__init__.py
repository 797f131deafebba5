"""The admin web UI: pages parse a form, call the API's own services and schemas, render."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from tokenledger.web import admin, auth, pages, portal, provider_bill
from tokenledger.web.common import WEB_DIR, error_page


def install(app: FastAPI) -> None:
    """Mount the pages and their static files on the app."""
    app.mount("/static", StaticFiles(directory=WEB_DIR / "static"), name="static")
    for router in (
        auth.router,
        pages.router,
        admin.router,
        portal.router,
        portal.admin_router,
        provider_bill.router,
    ):
        app.include_router(router)
    _html_for_unknown_pages(app)


def _html_for_unknown_pages(app: FastAPI) -> None:
    """A browser that asks for a page that does not exist gets a page, not JSON."""
    answer_json: Any = app.exception_handlers[HTTPException]

    async def handler(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        wants_page = "text/html" in request.headers.get("accept", "")
        if exc.status_code == 404 and wants_page and not request.url.path.startswith("/api/"):
            return error_page(request, 404, "")
        result: Response = await answer_json(request, exc)
        return result

    app.add_exception_handler(HTTPException, handler)
