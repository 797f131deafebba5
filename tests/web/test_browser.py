"""The UI in a real browser: Debian's Chromium, driven by Playwright, against a real server.

The server is a `tokenledger serve` process on a free loopback port with a SQLite file
holding the demo data. One scenario walks through what an operator does; then every
main page is photographed in both themes and both languages, wide and at 360 px. The
screenshots land in $TOKENLEDGER_SCREENSHOTS (default: a pytest temporary directory).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_PASSWORD, SECRET, add_admin, free_port, make_settings
from tokenledger.auth.service import create_api_key
from tokenledger.db import Database
from tokenledger.demo import load_demo_data
from tokenledger.migrations import runner

CHROMIUM = os.environ.get("TOKENLEDGER_TEST_CHROMIUM", "/usr/bin/chromium")
REQUIRE_BROWSER = os.environ.get("TOKENLEDGER_TEST_REQUIRE_BROWSER") == "1"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
SHOTS: list[Path] = []


def _need_browser() -> Any:
    """The Playwright module, or a skip (a failure where the browser is required)."""
    reason = None
    try:
        from playwright import sync_api
    except ImportError:
        reason = "playwright is not installed (pip install -e '.[dev]')"
    else:
        if not Path(CHROMIUM).exists():
            reason = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if reason:
        if REQUIRE_BROWSER:
            pytest.fail(f"browser tests are required here: {reason}")
        pytest.skip(reason)
    return sync_api


@dataclass
class Server:
    url: str
    database: Database
    ingest_key: str


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    _need_browser()
    home = tmp_path_factory.mktemp("browser")
    url = f"sqlite:///{home / 'tokenledger.db'}"
    settings = make_settings(url)
    database = Database(settings)
    runner.upgrade(database.engine)
    with database.session(write=True) as session:
        load_demo_data(session, settings)
        _key, secret = create_api_key(session, "browser test", None, actor=None)
    add_admin(database, "admin@example.com", "admin")
    add_admin(database, "viewer@example.com", "viewer")
    port = free_port()
    command = shutil.which("tokenledger", path=str(Path(sys.executable).parent))
    assert command, "the tokenledger command is not installed beside this Python"
    env = {
        **os.environ,
        "TOKENLEDGER_DATABASE_URL": url,
        "TOKENLEDGER_SECRET_KEY": SECRET,
        "TOKENLEDGER_WEBHOOK_WORKER": "false",
        "TOKENLEDGER_SQLITE_SYNCHRONOUS": "NORMAL",
        "TOKENLEDGER_BILLING_TIMEZONE": "Europe/Berlin",
    }
    log = (home / "server.log").open("wb")
    process = subprocess.Popen(
        [command, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=home,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, (home / "server.log").read_text()
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.1)
    try:
        yield Server(base, database, secret)
    finally:
        process.terminate()
        process.wait(timeout=15)
        log.close()
        database.dispose()


@pytest.fixture(scope="module")
def shots_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("TOKENLEDGER_SCREENSHOTS")
    path = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class Watch:
    """Console errors, page errors and failed requests seen by a browser page."""

    problems: list[str] = field(default_factory=list)

    def attach(self, page: Any) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on(
            "requestfailed",
            lambda request: self.problems.append(f"request failed: {request.url}"),
        )
        page.on("response", self._response)

    def _console(self, message: Any) -> None:
        if message.type in ("error", "warning"):
            self.problems.append(f"console {message.type}: {message.text}")

    def _response(self, response: Any) -> None:
        if response.status >= 400 and not response.url.endswith("/login"):
            self.problems.append(f"HTTP {response.status}: {response.url}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = _need_browser()
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


def _sign_in(page: Any, server: Server, email: str = "admin@example.com") -> None:
    page.goto(f"{server.url}/")
    assert "/login?next=" in page.url
    page.fill("#f-username", email)
    page.fill("#f-password", ADMIN_PASSWORD)
    with page.expect_navigation():
        page.click("button[type=submit]")


def _submit(page: Any, selector: str = "form.form button[type=submit]") -> None:
    with page.expect_navigation():
        page.click(selector)


def _meter_text(page: Any, kind: str) -> str:
    label = "Credits" if kind == "credits" else "USD budget"
    meter = page.locator(".meters .meter", has=page.locator(".meter-label", has_text=label))
    text: str = meter.first.inner_text()
    return " ".join(text.split())


def test_an_operator_walks_through_the_ui(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
    page = context.new_page()
    watch = Watch()
    watch.attach(page)

    _sign_in(page, server)
    assert page.url == f"{server.url}/"
    assert page.locator("h1").inner_text() == "Dashboard"
    assert page.locator("[data-total-cost]").inner_text().startswith("$")

    # Create an organization and a license through the forms.
    page.click("nav.nav >> text=Organizations")
    page.click("text=New organization")
    page.fill("#f-name", "Browser Test GmbH")
    _submit(page)
    assert page.locator("h1").inner_text().startswith("Browser Test GmbH")
    org_url = page.url
    org_id = int(org_url.rsplit("/", 1)[1])
    page.click("nav.tabs >> text=Licenses")
    page.click("text=New license")
    page.fill("#f-credits_total", "1000")
    page.fill("#f-cost_per_credit", "0.01")
    # The implied contract value follows the fields.
    assert page.locator("[data-contract-value]").inner_text() == "$10.00"
    page.fill("#f-token_budget_usd", "5")
    page.fill("#f-budget_warning_percent", "80")
    _submit(page)
    assert "License created." in page.locator(".notice").inner_text()

    page.goto(f"{org_url}/usage")
    assert _meter_text(page, "usd").startswith("USD budget 0.0 % · OK")
    assert page.locator("#monthly").count() == 0

    # Usage through the API: the bars and the monthly table change.
    response = httpx.post(
        f"{server.url}/api/v1/usage",
        headers={"Authorization": f"Bearer {server.ingest_key}"},
        json={
            "events": [
                {
                    "id": f"browser-{n}",
                    "organization": str(org_id),
                    "model": "claude-sonnet-4-5",
                    "input_tokens": 1000,
                    "output_tokens": 200,
                    "cache_read_input_tokens": 5000,
                    "cost_usd": "1.05",
                }
                for n in range(4)
            ]
        },
    )
    assert response.status_code == 200, response.text
    page.reload()
    usd = _meter_text(page, "usd")
    assert usd.startswith("USD budget 84.0 % · Warning"), usd
    assert "$4.20 of $5.00" in usd
    credits = _meter_text(page, "credits")
    assert credits.startswith("Credits 42.0 % · OK"), credits
    rows = page.locator("#monthly tbody tr")
    assert rows.count() == 1
    assert "$4.20" in rows.first.inner_text()
    cells = rows.first.inner_text().split("\t")
    assert cells[1:6] == ["4,000", "800", "0", "20,000", "$4.20"]  # input … cache read, cost

    # Edit the budget: the bar follows, and the audit log has it.
    page.click("nav.tabs >> text=Licenses")
    page.click("a[href$='/edit'][href^='/licenses/']")
    page.fill("#f-token_budget_usd", "10")
    _submit(page)
    page.goto(f"{org_url}/usage")
    assert _meter_text(page, "usd").startswith("USD budget 42.0 % · OK")
    page.goto(f"{server.url}/admin/audit")
    assert "license.budget_update" in page.locator("#audit").inner_text()

    # Language and theme switches stick.
    page.goto(org_url)
    page.click("a[lang=de]")
    assert page.locator("nav.tabs").inner_text().split("\n")[2] == "Token-Nutzung"
    page.click("a[data-theme-choice=light]")
    assert page.locator("html").get_attribute("data-theme") == "light"
    page.goto(f"{server.url}/organizations")
    assert page.locator("html").get_attribute("lang") == "de"
    assert page.locator("html").get_attribute("data-theme") == "light"
    page.click("a[lang=en]")
    page.click("a[data-theme-choice=dark]")

    # Sign out: pages send the browser back to the login page.
    page.click("text=Sign out")
    assert "/login" in page.url
    assert "You are signed out." in page.locator(".notice").inner_text()
    page.goto(f"{server.url}/organizations")
    assert "/login?next=" in page.url
    context.close()
    assert watch.problems == []


MAIN_PAGES = (
    ("dashboard", "/"),
    ("organizations", "/organizations"),
    ("organization-overview", "/organizations/{org}"),
    ("organization-licenses", "/organizations/{org}/licenses"),
    ("organization-token-usage", "/organizations/{org}/usage"),
    ("organization-keys", "/organizations/{org}/keys"),
    ("organization-alerts", "/organizations/{org}/alerts"),
    ("license-form", "/licenses/{license}/edit"),
    ("organization-form", "/organizations/new"),
    ("audit-log", "/admin/audit"),
    ("webhooks", "/admin/webhooks"),
    ("prices", "/admin/pricing"),
    ("ingest-keys", "/admin/keys"),
    ("admin-users", "/admin/users"),
    ("components", "/patterns"),
)
NARROW_PAGES = ("dashboard", "organizations", "organization-token-usage", "license-form")


def _demo_ids(server: Server) -> dict[str, int]:
    from sqlalchemy import select

    from tokenledger.licenses.models import License
    from tokenledger.organizations.models import Organization

    with server.database.session(write=False) as session:
        org = session.scalar(select(Organization).where(Organization.slug == "hafenstadt-logistik"))
        assert org is not None
        lic = session.scalar(select(License).where(License.organization_id == org.id))
        assert lic is not None
        return {"org": org.id, "license": lic.id}


def test_screenshots_of_every_main_page_in_both_themes_and_languages(browser, server, shots_dir):
    ids = _demo_ids(server)
    watch = Watch()
    for theme in ("dark", "light"):
        for language in ("en", "de"):
            for width, names in ((1440, None), (360, NARROW_PAGES)):
                context = browser.new_context(
                    viewport={"width": width, "height": 900},
                    color_scheme="dark" if theme == "dark" else "light",
                )
                page = context.new_page()
                watch.attach(page)
                page.goto(f"{server.url}/login")
                _photograph(page, shots_dir, "login", theme, language, width, first=True)
                _sign_in(page, server)
                page.goto(f"{server.url}/theme/{theme}?next=/lang/{language}")
                for name, path in MAIN_PAGES:
                    if names is not None and name not in names:
                        continue
                    page.goto(server.url + path.format(**ids))
                    assert page.locator("html").get_attribute("lang") == language
                    if name == "dashboard":
                        page.click(".chart-data summary")
                    _photograph(page, shots_dir, name, theme, language, width)
                context.close()
    assert len(SHOTS) == 4 * (len(MAIN_PAGES) + 1 + len(NARROW_PAGES) + 1)
    assert watch.problems == []


def _photograph(
    page: Any, folder: Path, name: str, theme: str, language: str, width: int, first: bool = False
) -> None:
    if first:
        # The login page before signing in: switch its language and theme by its own links.
        page.goto(
            f"{page.url.split('/login')[0]}/theme/{theme}?next=/lang/{language}%3Fnext%3D/login"
        )
    path = folder / f"{name}-{theme}-{language}-{width}.png"
    # Nothing pushes the page sideways: wide tables scroll inside their own box.
    page_width = page.evaluate("document.documentElement.scrollWidth")
    assert page_width <= width, f"{name} ({theme}, {language}) is {page_width}px wide at {width}px"
    page.screenshot(path=str(path), full_page=True)
    SHOTS.append(path)
    assert re.fullmatch(r"[a-z-]+-(dark|light)-(en|de)-\d+\.png", path.name)
