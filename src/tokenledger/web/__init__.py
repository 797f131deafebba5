"""The admin web UI: server-rendered pages on the same services as the API."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from tokenledger.web import admin, auth, pages
from tokenledger.web.common import WEB_DIR


def install(app: FastAPI) -> None:
    """Mount the pages and their static files on the app."""
    app.mount("/static", StaticFiles(directory=WEB_DIR / "static"), name="static")
    for router in (auth.router, pages.router, admin.router):
        app.include_router(router)
