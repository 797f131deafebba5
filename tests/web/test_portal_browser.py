"""The tenant portal in a real browser (Chromium through Playwright): framed by an allowed
origin, refused by another, and photographed in both languages and themes.

The portal runs on 127.0.0.1 with demo data; the framing pages are served by two small
servers of their own origins: http://localhost:A (allowed, another site than the portal's)
and http://localhost:B (not listed). Screenshots land beside the admin UI's.
"""

from __future__ import annotations

import html
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from tests.conftest import add_admin, admin_bearer, make_settings, serving
from tests.web.test_browser import CHROMIUM, CHROMIUM_ARGS, Watch, _need_browser
from tokenledger.app import create_app
from tokenledger.db import Database
from tokenledger.demo import load_demo_data
from tokenledger.migrations import runner

# Apart from test_browser.SHOTS, whose count that module checks.
PORTAL_SHOTS: list[Path] = []


class _Framer(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        src = parse_qs(urlparse(self.path).query).get("src", [""])[0]
        body = (
            "<!doctype html><html><head><title>Tenant app</title></head><body>"
            "<h1>A tenant's own product</h1>"
            f'<iframe id="portal" name="portal" src="{html.escape(src)}"'
            ' width="1100" height="900"></iframe>'
            "</body></html>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Portal:
    url: str  # the portal link
    allowed: str  # base URL of the allowed framing origin
    other: str  # base URL of an origin not listed


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    sync_api = _need_browser()
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("TOKENLEDGER_SCREENSHOTS")
    path = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _framer() -> tuple[ThreadingHTTPServer, threading.Thread]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Framer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    _need_browser()
    allowed, allowed_thread = _framer()
    other, other_thread = _framer()
    allowed_origin = f"http://localhost:{allowed.server_address[1]}"
    path = tmp_path_factory.mktemp("portal") / "tokenledger.db"
    settings = make_settings(
        f"sqlite:///{path}",
        billing_timezone="Europe/Berlin",
        portal_frame_ancestors=allowed_origin,
    )
    database = Database(settings)
    runner.upgrade(database.engine)
    with database.session(write=True) as session:
        load_demo_data(session, settings)
        from sqlalchemy import select

        from tokenledger.organizations.models import Organization

        org_id = session.scalar(
            select(Organization.id).where(Organization.slug == "hafenstadt-logistik")
        )
    admin = admin_bearer(add_admin(database, "admin@example.com", "admin"))
    try:
        with serving(create_app(settings)) as base:
            response = httpx.post(f"{base}/api/organizations/{org_id}/portal-links", headers=admin)
            assert response.status_code == 201, response.text
            yield Portal(
                url=response.json()["url"],
                allowed=allowed_origin,
                other=f"http://localhost:{other.server_address[1]}",
            )
    finally:
        for server, thread in ((allowed, allowed_thread), (other, other_thread)):
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
        database.dispose()


def _framed(page: Any, origin: str, portal_url: str) -> Any:
    page.goto(f"{origin}/?src={portal_url}")
    page.wait_for_load_state("load")
    return page.frame(name="portal")


def test_an_allowed_origin_frames_the_portal_and_another_is_refused(chromium, portal, shots):
    context = chromium.new_context(viewport={"width": 1280, "height": 1100}, locale="en-US")
    page = context.new_page()
    watch = Watch()
    watch.attach(page)
    frame = _framed(page, portal.allowed, portal.url)
    assert frame is not None
    frame.wait_for_selector("h1")
    assert frame.locator("h1").inner_text().startswith("Hafenstadt Logistik AG")
    assert frame.locator("#monthly tbody tr").count() >= 6
    # No cookie is needed, and none is set.
    assert frame.evaluate("document.cookie") == ""
    assert context.cookies() == []
    path = shots / "portal-framed-allowed.png"
    page.screenshot(path=str(path), full_page=True)
    PORTAL_SHOTS.append(path)
    assert watch.problems == []

    refused = context.new_page()
    messages: list[str] = []
    refused.on("console", lambda message: messages.append(message.text))
    refused.goto(f"{portal.other}/?src={portal.url}")
    refused.wait_for_load_state("load")
    refused.wait_for_timeout(300)
    child = refused.frames[1]
    # Chromium puts its own error page in the frame: nothing of the portal is shown.
    assert "Hafenstadt" not in child.content()
    assert any("frame-ancestors" in text for text in messages), messages
    path = shots / "portal-framed-refused.png"
    refused.screenshot(path=str(path), full_page=True)
    PORTAL_SHOTS.append(path)
    context.close()


def test_screenshots_of_the_portal_in_both_languages_and_themes(chromium, portal, shots):
    watch = Watch()
    for theme in ("dark", "light"):
        for language, locale in (("en", "en-US"), ("de", "de-DE")):
            for width in (1280, 360):
                context = chromium.new_context(
                    viewport={"width": width, "height": 900}, color_scheme=theme, locale=locale
                )
                page = context.new_page()
                watch.attach(page)
                page.goto(portal.url)
                assert page.locator("html").get_attribute("lang") == language
                background = page.evaluate("getComputedStyle(document.body).backgroundColor")
                assert (background == "rgb(11, 13, 18)") == (theme == "dark"), background
                page_width = page.evaluate("document.documentElement.scrollWidth")
                assert page_width <= width, f"the portal is {page_width}px wide at {width}px"
                path = shots / f"portal-{theme}-{language}-{width}.png"
                page.screenshot(path=str(path), full_page=True)
                PORTAL_SHOTS.append(path)
                context.close()
    assert watch.problems == []


def test_a_revoked_link_is_a_page_that_names_no_one(chromium, portal, shots):
    bad = portal.url[:-3] + ("abc" if not portal.url.endswith("abc") else "xyz")
    context = chromium.new_context(viewport={"width": 1280, "height": 700}, locale="de-DE")
    page = context.new_page()
    response = page.goto(bad)
    assert response is not None
    assert response.status == 401
    assert page.locator("h1").inner_text() == "Link ungültig"
    assert "Hafenstadt" not in page.content()
    path = shots / "portal-refused-de.png"
    page.screenshot(path=str(path), full_page=True)
    PORTAL_SHOTS.append(path)
    context.close()
