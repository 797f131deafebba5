"""The pages over HTTP: sign-in, permissions, CSRF, forms, security headers, totals."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.conftest import (
    ADMIN_PASSWORD,
    NOW,
    SECRET,
    FixedClock,
    add_admin,
    event,
    ingest,
    make_settings,
)
from tests.web.conftest import csrf_of, read, sign_in
from tokenledger.alerts.models import Alert
from tokenledger.app import create_app
from tokenledger.audit.models import AuditEntry
from tokenledger.auth.tokens import issue_token
from tokenledger.licenses.models import License
from tokenledger.organizations.models import Organization

PAGES = (
    "/",
    "/organizations",
    "/admin/audit",
    "/admin/webhooks",
    "/admin/pricing",
    "/admin/keys",
    "/patterns",
)


def org_pages(org_id: int) -> list[str]:
    return [
        f"/organizations/{org_id}",
        f"/organizations/{org_id}/licenses",
        f"/organizations/{org_id}/usage",
        f"/organizations/{org_id}/keys",
        f"/organizations/{org_id}/alerts",
    ]


def test_an_anonymous_page_request_goes_to_the_login_page(web):
    response = web.get("/organizations?show=near")
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=%2Forganizations%3Fshow%3Dnear"
    page = web.get(response.headers["location"])
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert "Sign in" in read(page.text).texts


def test_an_expired_session_says_so_on_the_login_page(web, database):
    user_id = add_admin(database, "admin@example.com")
    expired, _claims = issue_token(SECRET, user_id, -1)
    web.cookies.set("tl_session", expired)
    response = web.get("/")
    assert response.status_code == 303
    assert "expired=1" in response.headers["location"]
    page = web.get(response.headers["location"])
    assert "Your session has expired. Please sign in again." in read(page.text).texts


def test_a_session_cookie_the_browser_dropped_still_reads_as_expired(web, database):
    add_admin(database, "admin@example.com")
    token = csrf_of(web.get("/login").text)
    web.post(
        "/login",
        data={"username": "admin@example.com", "password": ADMIN_PASSWORD, "csrf_token": token},
    )
    # The cookie's lifetime ran out: the browser sends no session any more.
    web.cookies.delete("tl_session")
    response = web.get("/organizations")
    assert "expired=1" in response.headers["location"]


def test_sign_in_and_out_through_the_forms(web, database):
    add_admin(database, "admin@example.com")
    form = web.get("/login?next=/organizations")
    response = web.post(
        "/login",
        data={
            "username": "admin@example.com",
            "password": ADMIN_PASSWORD,
            "csrf_token": csrf_of(form.text),
            "next": "/organizations",
        },
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/organizations"
    assert web.get("/organizations").status_code == 200
    dashboard = web.get("/")
    response = web.post("/logout", data={"csrf_token": csrf_of(dashboard.text)})
    assert response.status_code == 303
    assert web.get("/login").status_code == 200
    # Signed out on purpose: the login page does not speak of an expired session.
    response = web.get("/")
    assert response.status_code == 303
    assert "expired" not in response.headers["location"]


def test_wrong_password_and_throttling_are_readable_pages(web, database):
    add_admin(database, "admin@example.com")
    token = csrf_of(web.get("/login").text)
    statuses = []
    for _ in range(6):
        response = web.post(
            "/login",
            data={"username": "admin@example.com", "password": "wrong-pass-1", "csrf_token": token},
        )
        statuses.append(response.status_code)
        assert "text/html" in response.headers["content-type"]
    assert statuses == [401, 401, 401, 401, 401, 429]
    texts = read(response.text).texts
    assert any(t.startswith("Too many failed sign-ins. Try again in") for t in texts), texts
    assert int(response.headers["retry-after"]) > 0


def test_a_login_without_its_form_token_is_refused(web, database):
    add_admin(database, "admin@example.com")
    response = web.post(
        "/login", data={"username": "admin@example.com", "password": ADMIN_PASSWORD}
    )
    assert response.status_code == 403
    assert "tl_session" not in response.cookies


def test_a_login_never_redirects_to_another_site(web, database):
    add_admin(database, "admin@example.com")
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        token = csrf_of(web.get("/login").text)
        response = web.post(
            "/login",
            data={
                "username": "admin@example.com",
                "password": ADMIN_PASSWORD,
                "csrf_token": token,
                "next": target,
            },
        )
        assert response.headers["location"] == "/", target


def test_every_page_has_the_security_headers_and_no_inline_script_or_style(
    admin_browser, make_tenant
):
    tenant = make_tenant(license={})
    ingest(admin_browser.client, tenant, event("1.5", at=NOW))
    for path in (*PAGES, "/admin/users", "/login", *org_pages(tenant.org_id)):
        response = admin_browser.get(path)
        assert response.status_code == 200, path
        csp = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert "script-src 'self'" in csp
        assert "style-src 'self'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"]
        html = response.text
        assert not re.search(r"\sstyle=", html), path
        assert not re.search(r"<style", html), path
        assert not re.search(r"\son[a-z]+=", html), path
        for script in re.findall(r"<script[^>]*>", html):
            assert 'src="/static/' in script, (path, script)
        # Every form that writes carries the CSRF token.
        for form in re.findall(r"<form[^>]*method=\"post\"[^>]*>(.*?)</form>", html, re.S):
            assert 'name="csrf_token"' in form, path


def test_a_viewer_sees_everything_and_no_write_control(viewer_browser, make_tenant):
    tenant = make_tenant(license={})
    for path in (*PAGES, *org_pages(tenant.org_id)):
        response = viewer_browser.get(path)
        assert response.status_code == 200, path
        page = read(response.text)
        writes = [
            f for f in page.forms if f.get("method") == "post" and f.get("action") != "/logout"
        ]
        assert writes == [], (path, writes)
        assert not any(link.endswith(("/new", "/edit")) for link in page.links), path
    for path in ("/admin/users", "/organizations/new", f"/organizations/{tenant.org_id}/edit"):
        response = viewer_browser.get(path)
        assert response.status_code == 403, path
        assert "text/html" in response.headers["content-type"]
        assert "This needs the admin role." in read(response.text).texts


def test_a_viewer_cannot_write_through_a_page(viewer_browser, database):
    response = viewer_browser.post("/organizations/new", {"name": "Sneaky"})
    assert response.status_code == 403
    with database.session(write=False) as session:
        assert session.scalar(select(Organization).where(Organization.name == "Sneaky")) is None


def test_a_form_without_the_csrf_token_stores_nothing(admin_browser, database):
    response = admin_browser.client.post(
        "/organizations/new", data={"name": "Forged"}, follow_redirects=False
    )
    assert response.status_code == 403
    assert "The form has expired. Reload the page and try again." in read(response.text).texts
    with database.session(write=False) as session:
        assert session.scalar(select(Organization).where(Organization.name == "Forged")) is None


def test_create_and_edit_an_organization(admin_browser, database):
    response = admin_browser.post("/organizations/new", {"name": "Acme Analytics", "slug": ""})
    assert response.status_code == 303
    org_id = int(response.headers["location"].rsplit("/", 1)[1])
    page = admin_browser.get(response.headers["location"])
    assert "Organization Acme Analytics created." in read(page.text).texts
    # The same validation as the API: a bad slug is a field error, nothing is stored.
    response = admin_browser.post(
        f"/organizations/{org_id}/edit", {"name": "Acme", "slug": "Not A Slug"}
    )
    assert response.status_code == 422
    assert "Use lowercase letters, digits and single hyphens." in read(response.text).texts
    response = admin_browser.post(f"/organizations/{org_id}/edit", {"name": "Acme", "slug": "acme"})
    assert response.status_code == 303
    with database.session(write=False) as session:
        org = session.get(Organization, org_id)
        assert (org.name, org.slug) == ("Acme", "acme")
        actions = session.scalars(
            select(AuditEntry.action).where(AuditEntry.entity_id == str(org_id))
        ).all()
        assert sorted(actions) == ["organization.create", "organization.update"]


def _license_form(**overrides: str) -> dict[str, str]:
    values = {
        "status": "active",
        "valid_from": "2026-11-01",
        "valid_until": "",
        "credits_total": "5000",
        "cost_per_credit": "0.01",
        "token_budget_usd": "40",
        "budget_period": "monthly",
        "budget_warning_percent": "80",
        "enforcement": "soft",
    }
    values.update(overrides)
    return values


def test_license_form_shows_field_errors_of_the_api_validation(
    admin_browser, make_tenant, database
):
    tenant = make_tenant()
    path = f"/organizations/{tenant.org_id}/licenses/new"
    response = admin_browser.post(
        path,
        _license_form(
            credits_total="-5",
            cost_per_credit="abc",
            budget_warning_percent="101",
            token_budget_usd="0",
        ),
    )
    assert response.status_code == 422
    page = read(response.text)
    assert "Must be at least 0." in page.texts
    assert "Enter a number." in page.texts
    assert "Must be at most 100." in page.texts
    # 0 is not "unlimited": the form says which to choose.
    assert "Enter more than 0, or choose unlimited." in page.texts
    with database.session(write=False) as session:
        assert (
            session.scalar(select(License).where(License.organization_id == tenant.org_id)) is None
        )


def test_create_a_license_with_unlimited_credits_and_edit_its_budget(
    admin_browser, make_tenant, database
):
    tenant = make_tenant()
    response = admin_browser.post(
        f"/organizations/{tenant.org_id}/licenses/new",
        _license_form(credits_unlimited="on", credits_total="", token_budget_usd="40"),
    )
    assert response.status_code == 303, response.text
    with database.session(write=False) as session:
        lic = session.scalar(select(License).where(License.organization_id == tenant.org_id))
        assert lic.credits_total_micro == 0  # the ledger's "no credit limit"
        assert lic.token_budget_nano == 40 * 10**9
        assert lic.valid_from == datetime(2026, 11, 1, tzinfo=UTC)
        license_id = lic.id
    ingest(admin_browser.client, tenant, event("35", at=NOW))
    # Lowering the budget below the spend follows PUT /api/token-usage/budget: audited,
    # and the alerts it now crosses fire.
    response = admin_browser.post(
        f"/licenses/{license_id}/edit",
        _license_form(credits_unlimited="on", credits_total="", token_budget_usd="30"),
    )
    assert response.status_code == 303, response.text
    with database.session(write=False) as session:
        lic = session.get(License, license_id)
        assert lic.token_budget_nano == 30 * 10**9
        entries = session.scalars(
            select(AuditEntry)
            .where(AuditEntry.entity_id == str(license_id))
            .order_by(AuditEntry.id)
        ).all()
        assert [e.action for e in entries] == ["license.create", "license.budget_update"]
        assert entries[1].before["token_budget_usd"] == "40.000000000"
        assert entries[1].after["token_budget_usd"] == "30.000000000"
        alerts = session.scalars(select(Alert.type).where(Alert.license_id == license_id)).all()
        assert {"budget.warning", "budget.exhausted"} <= set(alerts)
    # An unchanged form writes no new audit entry.
    response = admin_browser.post(
        f"/licenses/{license_id}/edit",
        _license_form(credits_unlimited="on", credits_total="", token_budget_usd="30"),
    )
    assert response.status_code == 303
    with database.session(write=False) as session:
        count = len(
            session.scalars(select(AuditEntry).where(AuditEntry.entity_id == str(license_id))).all()
        )
        assert count == 2


def test_credits_used_set_in_the_form_is_an_audited_adjustment(
    admin_browser, make_tenant, database
):
    tenant = make_tenant(license={"credits_total": Decimal(1000)})
    form = admin_browser.get(f"/licenses/{tenant.license_id}/edit").text
    shown = re.search(r'name="valid_from" type="date" value="([^"]+)"', form).group(1)
    response = admin_browser.post(
        f"/licenses/{tenant.license_id}/edit",
        _license_form(
            credits_total="1000", token_budget_usd="100", credits_used="250", valid_from=shown
        ),
    )
    assert response.status_code == 303, response.text
    with database.session(write=False) as session:
        assert session.get(License, tenant.license_id).credits_used_micro == 250 * 10**6
        actions = session.scalars(
            select(AuditEntry.action).where(AuditEntry.entity_id == str(tenant.license_id))
        ).all()
        assert "license.credits_adjustment" in actions


def test_an_ingest_key_is_shown_once(admin_browser, make_tenant):
    tenant = make_tenant()
    response = admin_browser.post(f"/organizations/{tenant.org_id}/keys", {"name": "worker"})
    assert response.status_code == 201
    secret = re.search(r'<code id="new-secret">(tl_[^<]+)</code>', response.text).group(1)
    # The key works, and is never shown again.
    answer = admin_browser.client.get(
        "/api/v1/budget", headers={"Authorization": f"Bearer {secret}"}
    )
    assert answer.status_code == 200
    assert secret not in admin_browser.get(f"/organizations/{tenant.org_id}/keys").text
    assert secret not in admin_browser.get("/admin/keys").text


def _cost(value: str) -> Decimal:
    return Decimal(value)


def test_every_total_is_the_sum_of_its_rows_and_the_dashboards_figure(admin_browser, make_tenant):
    first = make_tenant(license={"valid_from": datetime(2026, 1, 1, tzinfo=UTC)})
    second = make_tenant(license={"valid_from": datetime(2026, 1, 1, tzinfo=UTC)})
    october = datetime(2026, 10, 20, 9, 0, tzinfo=UTC)
    november = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)
    ingest(
        admin_browser.client,
        first,
        event("1.25", at=october, model="claude-haiku-4-5"),
        event("0.333333333", at=november, model="claude-haiku-4-5"),
        event("2.5", at=november, model="claude-opus-4-1"),
        event("0.000000001", at=NOW, model="claude-opus-4-1"),
    )
    ingest(admin_browser.client, second, event("7", at=october), event("0.1", at=november))
    # By hand: first 4.083333334 (oct 1.25, nov 2.833333334); second 7.1 (oct 7, nov 0.1).
    usage = read(admin_browser.get(f"/organizations/{first.org_id}/usage?month=2026-11").text)
    monthly = usage.tables["monthly"]
    assert [Decimal(row["data-cost"]) for row in monthly.rows] == [
        Decimal("2.833333334"),
        Decimal("1.25"),
    ]
    assert monthly.sum("data-cost") == _cost(monthly.total["data-cost"]) == Decimal("4.083333334")
    models = usage.tables["models"]
    assert models.sum("data-cost") == _cost(models.total["data-cost"]) == Decimal("2.833333334")
    daily = usage.tables["daily"]
    assert len(daily.rows) == 30
    assert daily.sum("data-cost") == _cost(daily.total["data-cost"]) == Decimal("2.833333334")

    orgs = read(admin_browser.get("/organizations").text).tables["organizations"]
    assert orgs.sum("data-cost") == _cost(orgs.total["data-cost"]) == Decimal("11.183333334")
    assert orgs.sum("data-month-cost") == _cost(orgs.total["data-month-cost"])
    assert _cost(orgs.total["data-month-cost"]) == Decimal("2.933333334")

    dashboard = read(admin_browser.get("/").text)
    months = dashboard.tables["dashboard-months"]
    assert months.sum("data-cost") == _cost(months.total["data-cost"]) == Decimal("11.183333334")
    assert [Decimal(v) for v in dashboard.data["data-total-cost"]] == [Decimal("11.183333334")]
    assert [Decimal(v) for v in dashboard.data["data-month-cost"]] == [Decimal("2.933333334")]


def test_this_month_of_the_pages_is_the_clocks_in_the_billing_time_zone(
    database_url, database, make_tenant
):
    # 23:30 UTC on 30 November is 00:30 on 1 December in Berlin: the pages' month is December.
    now = datetime(2026, 11, 30, 23, 30, tzinfo=UTC)
    settings = make_settings(database_url, billing_timezone="Europe/Berlin")
    tenant = make_tenant(license={"valid_from": datetime(2026, 1, 1, tzinfo=UTC)})
    with TestClient(create_app(settings, clock=FixedClock(now)), follow_redirects=False) as client:
        browser = sign_in(client, database, "admin@example.com", "admin")
        ingest(
            client,
            tenant,
            event("0.75"),  # stamped at receipt: December in Berlin
            event("5", at=datetime(2026, 11, 30, 22, 59, tzinfo=UTC)),  # 23:59 in Berlin
        )
        usage = read(browser.get(f"/organizations/{tenant.org_id}/usage").text)
        assert usage.tables["models"].sum("data-cost") == Decimal("0.75")
        assert [Decimal(row["data-cost"]) for row in usage.tables["monthly"].rows] == [
            Decimal("0.75"),  # Dec 2026
            Decimal(5),  # Nov 2026
        ]
        dashboard = read(browser.get("/").text)
        assert [Decimal(v) for v in dashboard.data["data-month-cost"]] == [Decimal("0.75")]
        assert [Decimal(v) for v in dashboard.data["data-total-cost"]] == [Decimal("5.75")]


def test_german_pages_format_money_and_months_with_babel(admin_browser, make_tenant):
    tenant = make_tenant(license={"valid_from": datetime(2026, 1, 1, tzinfo=UTC)})
    ingest(admin_browser.client, tenant, event("1234.56", at=NOW))
    admin_browser.client.cookies.set("tl_lang", "de")
    page = read(admin_browser.get(f"/organizations/{tenant.org_id}/usage").text)
    assert "1.234,56 $" in page.texts
    assert "Nov. 2026" in page.texts
    assert "Token-Nutzung" in page.texts
    admin_browser.client.cookies.set("tl_lang", "en")
    page = read(admin_browser.get(f"/organizations/{tenant.org_id}/usage").text)
    assert "$1,234.56" in page.texts
    assert "Nov 2026" in page.texts
    assert "Token usage" in page.texts


def test_the_language_follows_accept_language_until_one_is_chosen(admin_browser):
    client = admin_browser.client
    german = client.get("/", headers={"Accept-Language": "de-DE,de;q=0.9,en;q=0.5"})
    assert '<html lang="de"' in german.text
    english = client.get("/", headers={"Accept-Language": "fr-FR,en;q=0.3"})
    assert '<html lang="en"' in english.text
    response = client.get("/lang/de?next=/organizations")
    assert response.status_code == 303
    assert response.headers["location"] == "/organizations"
    chosen = client.get("/", headers={"Accept-Language": "en"})
    assert '<html lang="de"' in chosen.text


def test_the_theme_is_dark_by_default_and_the_switch_sticks(admin_browser):
    client = admin_browser.client
    assert '<html lang="en" data-theme="dark">' in client.get("/").text
    for theme in ("light", "auto", "dark"):
        assert client.get(f"/theme/{theme}?next=/").status_code == 303
        assert f'<html lang="en" data-theme="{theme}">' in client.get("/").text
    client.get("/theme/purple?next=/")  # unknown: the choice stays
    assert '<html lang="en" data-theme="dark">' in client.get("/").text


def test_an_unknown_organization_is_a_readable_404_page(admin_browser):
    response = admin_browser.get("/organizations/999999/usage")
    assert response.status_code == 404
    assert "text/html" in response.headers["content-type"]
    assert "This page or record does not exist." in read(response.text).texts


def test_the_pattern_page_shows_every_component(admin_browser):
    html = admin_browser.get("/patterns").text
    for css_class in (
        "stat",
        "meter--ok",
        "meter--warning",
        "meter--exhausted",
        "badge--exhausted",
        "button--primary",
        "button--danger",
        "notice--danger",
        "field--invalid",
        "tabs",
        "chart-plot",
        "facts",
        "empty",
    ):
        assert f"{css_class}" in html, css_class


def test_templates_hold_no_text_outside_translation_calls():
    """Hard-coded words in a template would stay English on a German page."""
    templates = Path(__file__).parents[2] / "src/tokenledger/web/templates"
    allowed = {"tokenledger", "HTTP"}
    problems = []
    for template in sorted(templates.rglob("*.html")):
        source = template.read_text()
        source = re.sub(r"\{#.*?#\}|\{%.*?%\}|\{\{.*?\}\}", " ", source, flags=re.S)
        source = re.sub(r"<[^>]*>", " ", source, flags=re.S)
        words = {w for w in re.findall(r"[A-Za-zÄÖÜäöüß]{2,}", source) if w not in allowed}
        if words:
            problems.append(f"{template.name}: {sorted(words)}")
    assert not problems, problems


def test_names_from_callers_are_escaped(admin_browser):
    hostile = '<img src=x onerror="alert(1)">'
    response = admin_browser.post("/organizations/new", {"name": hostile})
    assert response.status_code == 303
    for path in ("/organizations", response.headers["location"]):
        html = admin_browser.get(path).text
        assert hostile not in html
        assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in html


def test_an_unknown_address_is_a_page_for_a_browser_and_json_for_the_api(web):
    page = web.get("/no-such-page", headers={"Accept": "text/html,application/xhtml+xml"})
    assert page.status_code == 404
    assert "This page or record does not exist." in read(page.text).texts
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    api = web.get("/api/no-such-route", headers={"Accept": "text/html"})
    assert api.status_code == 404
    assert api.json()["error"]["code"] == "not_found"


def test_an_id_no_row_can_have_is_a_readable_page(admin_browser):
    for path in ("/organizations/99999999999999999999", "/licenses/0/edit", "/organizations/x"):
        response = admin_browser.get(path)
        assert response.status_code == 422, path
        assert "The address holds an invalid value." in read(response.text).texts
