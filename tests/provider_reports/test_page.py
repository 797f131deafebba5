"""The "Provider bill" page: the worst days first, mapping an account from the page, both
languages, and a real browser in both themes (screenshots, no console errors, no CSP
violation)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.conftest import NOW, serving
from tests.provider_reports.standin import StandIn
from tests.provider_reports.test_anthropic import (  # the scenario worked by hand there
    ledger_usage,
    map_accounts,
    provider_reports,
    run_sync,
)
from tests.web.conftest import sign_in

from tokenledger.config import Settings
from tokenledger.db import Database

PAGE = "/admin/provider-bill?provider=anthropic&from=2026-11-15&to=2026-11-18"
CHROMIUM = os.environ.get("TOKENLEDGER_TEST_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture
def billed(
    fixed_client: TestClient,
    database: Database,
    settings: Settings,
    standin: StandIn,
    orgs: dict[str, Any],
    admin_headers: dict[str, str],
) -> TestClient:
    provider_reports(standin)
    ledger_usage(fixed_client, orgs, admin_headers)
    map_accounts(fixed_client, orgs, admin_headers)
    run_sync(database, settings)
    return fixed_client


def test_the_page_lists_the_worst_days_first(billed: TestClient, database: Database) -> None:
    browser = sign_in(billed, database, "ops@example.com", "admin")
    page = browser.get(PAGE)
    assert page.status_code == 200
    days = re.findall(r'<tr data-day="([\d-]+)"', page.text)
    # |drift|: the 15th 2.10, the 16th 1.50, the 17th 0.45, the 18th 0.03
    assert days == ["2026-11-15", "2026-11-16", "2026-11-17", "2026-11-18"]
    assert re.findall(r'data-drift="([^"]+)"', page.text) == ["2.10", "1.50", "-0.45", "0.03"]
    assert "apikey_stray" in page.text
    assert "Unassigned" in page.text
    assert "partial" in page.text
    german = browser.get(PAGE, headers={"Accept-Language": "de"})
    assert "Anbieterrechnung" in german.text
    assert "Nicht zugeordnet" in german.text


def test_an_admin_maps_a_key_from_the_page(
    billed: TestClient, database: Database, orgs: dict[str, Any], admin_headers: dict[str, str]
) -> None:
    browser = sign_in(billed, database, "ops@example.com", "admin")
    answer = browser.post(
        "/admin/provider-bill/accounts",
        {
            "provider": "anthropic",
            "kind": "api_key",
            "external_id": "apikey_stray",
            "organization_id": str(orgs["beta"]),
        },
    )
    assert answer.status_code == 303
    beta = billed.get(
        "/api/provider-reports/comparison",
        params={"provider": "anthropic", "from": "2026-11-15", "to": "2026-11-15",
                "organization_id": orgs["beta"]},
        headers=admin_headers,
    ).json()  # fmt: skip
    # Beta now has its workspace's $0.30 and the stray key's $0.60.
    assert beta["provider_cost_usd"] == "0.90"
    viewer = sign_in(TestClient(billed.app), database, "viewer@example.com", "viewer")
    refused = viewer.post(
        "/admin/provider-bill/accounts",
        {"provider": "anthropic", "kind": "api_key", "external_id": "apikey_stray"},
    )
    assert refused.status_code == 403


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}")
def test_screenshots_in_both_themes_and_languages(
    billed: TestClient, database: Database, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright
    from tests.conftest import ADMIN_PASSWORD, add_admin

    add_admin(database, "shots@example.com", "admin")
    folder = Path(os.environ.get("TOKENLEDGER_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    with serving(billed.app) as url, sync_playwright() as playwright:  # type: ignore[arg-type]
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update"],
        )  # fmt: skip
        for theme in ("dark", "light"):
            for language in ("en", "de"):
                context = chromium.new_context(viewport={"width": 1440, "height": 900})
                page = context.new_page()
                page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
                page.goto(f"{url}/login")
                page.fill("#f-username", "shots@example.com")
                page.fill("#f-password", ADMIN_PASSWORD)
                with page.expect_navigation():
                    page.click("button[type=submit]")
                page.goto(f"{url}/theme/{theme}?next=/lang/{language}")
                page.goto(url + PAGE)
                assert page.locator("#bill-chart rect.chart-bar").count() == 8
                page.screenshot(
                    path=str(folder / f"provider-bill-{theme}-{language}-1440.png"), full_page=True
                )
                context.close()
        chromium.close()
    assert problems == []


def test_drift_alerts_show_on_the_dashboard_and_the_delivery_log(
    billed: TestClient, database: Database
) -> None:
    from tokenledger.alerts.models import Webhook
    from tokenledger.alerts.service import queue_deliveries
    from tokenledger.alerts.webhooks import new_secret

    with database.session(write=True) as session:
        session.add(Webhook(url="https://hooks.example.com/in", secret=new_secret()))
        session.flush()
        queue_deliveries(session, [1, 2, 3], NOW)
    browser = sign_in(billed, database, "ops@example.com", "admin")
    dashboard = browser.get("/")
    assert dashboard.status_code == 200
    assert dashboard.text.count("Provider bill drift") == 3
    assert "Nov 15, 2026" in dashboard.text  # a day, not a month
    assert 'href="/admin/provider-bill?provider=anthropic"' in dashboard.text
    hooks = browser.get("/admin/webhooks")
    assert hooks.status_code == 200
    assert hooks.text.count("Provider bill drift") == 3
