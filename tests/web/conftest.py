"""Fixtures of the web UI tests: a signed-in browser session, and reading rendered pages."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from html.parser import HTMLParser
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import SECRET, FixedClock, add_admin
from tokenledger.app import create_app
from tokenledger.auth.tokens import issue_token
from tokenledger.config import Settings
from tokenledger.db import Database
from tokenledger.deps import CSRF_COOKIE, SESSION_COOKIE


@dataclass
class Browser:
    """A TestClient with a session cookie, as a browser has after signing in."""

    client: TestClient
    csrf: str
    user_id: int

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.client.get(path, **kwargs)

    def post(self, path: str, data: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        form = {"csrf_token": self.csrf, **(data or {})}
        return self.client.post(path, data=form, follow_redirects=False, **kwargs)


def sign_in(client: TestClient, database: Database, email: str, role: str) -> Browser:
    user_id = add_admin(database, email, role)
    token, claims = issue_token(SECRET, user_id, 60)
    client.cookies.set(SESSION_COOKIE, token)
    client.cookies.set(CSRF_COOKIE, claims.csrf)
    return Browser(client, claims.csrf, user_id)


@pytest.fixture
def app(settings: Settings, clock: FixedClock) -> Any:
    """Pages and routes read "now" from the app's clock: NOW, a fixed mid-month instant."""
    return create_app(settings, clock=clock)


@pytest.fixture
def web(app: Any) -> Iterator[TestClient]:
    with TestClient(app, follow_redirects=False) as client:
        yield client


@pytest.fixture
def admin_browser(web: TestClient, database: Database) -> Browser:
    return sign_in(web, database, "admin@example.com", "admin")


@pytest.fixture
def viewer_browser(app: Any, database: Database) -> Iterator[Browser]:
    # Entered, so that the app's lifespan closes its database connections at the end.
    with TestClient(app, follow_redirects=False) as client:
        yield sign_in(client, database, "viewer@example.com", "viewer")


@dataclass
class Table:
    rows: list[dict[str, str]] = field(default_factory=list)
    total: dict[str, str] = field(default_factory=dict)

    def sum(self, attribute: str) -> Decimal:
        return sum((Decimal(row[attribute]) for row in self.rows if attribute in row), Decimal(0))


class PageReader(HTMLParser):
    """Visible text nodes, tables with data-row/data-total cells, forms and attributes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.texts: list[str] = []
        self.tables: dict[str, Table] = defaultdict(Table)
        self.data: dict[str, list[str]] = defaultdict(list)
        self.forms: list[dict[str, str]] = []
        self.links: list[str] = []
        self.attributes: list[tuple[str, str, str]] = []
        self._skip = 0
        self._table: list[str] = []
        self._row: dict[str, str] | None = None
        self._row_kind = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        for name, value in values.items():
            self.attributes.append((tag, name, value))
            if name.startswith("data-") and name.endswith("cost") and self._row is None:
                self.data[name].append(value)
        if tag in ("script", "style", "title"):
            self._skip += 1
        if tag == "table":
            self._table.append(values.get("id", ""))
        if tag == "tr":
            self._row = {}
            self._row_kind = (
                "row" if "data-row" in values else "total" if "data-total" in values else ""
            )
        if self._row is not None:
            for name, value in values.items():
                if name.startswith("data-") and name not in ("data-row", "data-total"):
                    self._row[name] = value
        if tag == "form":
            self.forms.append(values)
        if tag == "a" and "href" in values:
            self.links.append(values["href"])

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "title"):
            self._skip -= 1
        if tag == "tr" and self._row is not None:
            if self._table and self._row_kind:
                table = self.tables[self._table[-1]]
                if self._row_kind == "row":
                    table.rows.append(self._row)
                else:
                    table.total = self._row
            self._row = None
        if tag == "table" and self._table:
            self._table.pop()

    def handle_data(self, data: str) -> None:
        text = " ".join(data.split())
        if text and not self._skip:
            self.texts.append(text)

    @property
    def text(self) -> str:
        return " ".join(self.texts)


def read(html: str) -> PageReader:
    reader = PageReader()
    reader.feed(html)
    return reader


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say where the browser tests left their screenshots."""
    from tests.web import test_browser

    if test_browser.SHOTS:
        folder = test_browser.SHOTS[0].parent
        terminalreporter.write_line(
            f"web UI screenshots: {len(test_browser.SHOTS)} in {folder}", bold=True
        )
