"""Administration pages and the organization list's filters, over HTTP."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook as Verifier

from tests.conftest import NOW, FixedClock, Receiver, event, ingest, make_settings
from tests.web.conftest import read, sign_in
from tokenledger.alerts.models import Webhook
from tokenledger.app import create_app
from tokenledger.auth.models import AdminUser


def test_organization_list_filters_and_sorting(admin_browser, make_tenant):
    def budget(usd: str) -> dict[str, object]:
        return {
            "credits_total": Decimal(0),
            "token_budget_usd": Decimal(usd),
            "valid_from": datetime(2026, 1, 1, tzinfo=UTC),
        }

    calm = make_tenant(license=budget("100"), name="Calm Co", slug="calm")
    near = make_tenant(license=budget("10"), name="Near Co", slug="near")
    spent = make_tenant(license=budget("10"), name="Spent Co", slug="spent")
    make_tenant(name="Bare Co", slug="bare")
    ingest(admin_browser.client, calm, event("5", at=NOW))  # 5 %
    ingest(admin_browser.client, near, event("8.5", at=NOW))  # 85 %: warning
    ingest(admin_browser.client, spent, event("12", at=NOW))  # 120 %: exhausted

    def slugs(query: str) -> list[str]:
        page = read(admin_browser.get(f"/organizations?{query}").text)
        return [row["data-org"] for row in page.tables["organizations"].rows]

    assert slugs("") == ["bare", "calm", "near", "spent"]
    assert slugs("show=near") == ["near"]
    assert slugs("show=exhausted") == ["spent"]
    assert slugs("show=no_license") == ["bare"]
    # At the last 7 days' pace (8.5 / 7 a day), near's 1.50 left lasts until Nov 19,
    # before December; calm's 95 last 133 days; spent has run out already (not a forecast).
    assert slugs("show=runs_out") == ["near"]
    assert slugs("min_used=50") == ["near", "spent"]
    assert slugs("sort=used") == ["spent", "near", "calm", "bare"]
    assert slugs("sort=total") == ["spent", "near", "calm", "bare"]
    assert slugs("q=co&show=near") == ["near"]
    assert slugs("q=NEAR") == ["near"]
    assert slugs("q=%25") == []  # the search is plain text: % matches only itself
    texts = read(admin_browser.get("/organizations?show=exhausted").text).texts
    assert "Exhausted" in texts  # the state in words, not colour alone


def test_an_unpriced_event_is_never_shown_as_zero(admin_browser, make_tenant):
    tenant = make_tenant(license={"valid_from": datetime(2026, 1, 1, tzinfo=UTC)})
    ingest(admin_browser.client, tenant, event(None, at=NOW, model="house-model-7"))
    usage = admin_browser.get(f"/organizations/{tenant.org_id}/usage?month=2026-11").text
    models = read(usage).tables["models"]
    assert len(models.rows) == 1
    row_html = usage.split('id="models"')[1].split("</tr>")[1]
    assert "Unpriced" in row_html
    assert "$0.00" not in row_html
    pricing = read(admin_browser.get("/admin/pricing").text)
    assert "house-model-7" in pricing.texts
    dashboard = read(admin_browser.get("/").text)
    assert "Unpriced events" in dashboard.texts


def test_audit_log_filters_by_entity_and_actor(admin_browser, database):
    admin_browser.post("/organizations/new", {"name": "Audited"})
    other = TestClient(admin_browser.client.app, follow_redirects=False)
    second = sign_in(other, database, "second@example.com", "admin")
    second.post("/organizations/new", {"name": "Also audited"})
    page = read(admin_browser.get("/admin/audit?actor=second@example.com").text)
    assert "Also audited" in page.text
    assert "Audited" not in page.texts
    page = read(admin_browser.get("/admin/audit?entity=organization").text)
    assert page.text.count("organization.create") == 2
    page = read(admin_browser.get("/admin/audit?entity=license").text)
    assert "No entries match." in page.texts


def test_admin_users_page_creates_and_disables_accounts(admin_browser, database):
    response = admin_browser.post(
        "/admin/users", {"email": "new@example.com", "password": "short", "role": "viewer"}
    )
    assert response.status_code == 422
    assert any("at least 10 characters" in t for t in read(response.text).texts)
    response = admin_browser.post(
        "/admin/users",
        {"email": "new@example.com", "password": "a-long-enough-secret", "role": "viewer"},
    )
    assert response.status_code == 303
    with database.session(write=False) as session:
        user = session.scalar(select(AdminUser).where(AdminUser.email == "new@example.com"))
        assert user.role == "viewer"
        user_id = user.id
    assert admin_browser.post(f"/admin/users/{user_id}/disable").status_code == 303
    with database.session(write=False) as session:
        assert session.get(AdminUser, user_id).disabled_at is not None
    # Not one's own account.
    response = admin_browser.post(f"/admin/users/{admin_browser.user_id}/disable")
    assert response.status_code == 409


@pytest.fixture
def private_hooks_app(database_url: str):  # type: ignore[no-untyped-def]
    return create_app(
        make_settings(database_url, webhooks_allow_private=True), clock=FixedClock(NOW)
    )


def test_a_test_delivery_reaches_the_webhook_signed(
    private_hooks_app, database, receiver: Receiver
):
    with TestClient(private_hooks_app, follow_redirects=False) as client:
        browser = sign_in(client, database, "admin@example.com", "admin")
        response = browser.post("/admin/webhooks", {"url": receiver.url, "description": "ops"})
        assert response.status_code == 201
        secret = response.text.split('<code id="new-secret">')[1].split("</code>")[0]
        assert secret.startswith("whsec_")
        with database.session(write=False) as session:
            hook_id = session.scalar(select(Webhook.id))
        response = browser.post(f"/admin/webhooks/{hook_id}/test")
        assert response.status_code == 200
        assert f"Test delivery to {receiver.url} answered 200." in read(response.text).texts
        receiver.statuses.append(500)
        response = browser.post(f"/admin/webhooks/{hook_id}/test")
        assert f"Test delivery to {receiver.url} failed: HTTP 500" in read(response.text).texts
    assert len(receiver.requests) == 2
    first = receiver.requests[0]
    headers = {name.lower(): value for name, value in first.headers.items()}
    payload = Verifier(secret).verify(first.body, headers)
    assert payload["type"] == "webhook.test"
    assert (
        headers["webhook-id"]
        != {k.lower(): v for k, v in receiver.requests[1].headers.items()}["webhook-id"]
    )
    assert json.loads(first.body)["webhook_id"] == hook_id


def test_price_overrides_are_set_and_removed_through_the_page(admin_browser, database):
    response = admin_browser.post(
        "/admin/pricing",
        {"provider": "anthropic", "model": "house-model-7", "input": "abc", "output": "4"},
    )
    assert response.status_code == 422
    response = admin_browser.post(
        "/admin/pricing",
        {
            "provider": "anthropic",
            "model": "house-model-7",
            "input": "3",
            "output": "15",
            "valid_from": "2026-11-01",
        },
    )
    assert response.status_code == 303, response.text
    page = admin_browser.get("/admin/pricing").text
    row = page.split("<code>house-model-7</code>")[1].split("</tr>")[0]
    assert "$3.00" in row
    assert "$15.00" in row
    with database.session(write=False) as session:
        from tokenledger.pricing.models import PriceOverrideRow

        stored = session.scalar(select(PriceOverrideRow))
        assert stored.valid_from == datetime(2026, 11, 1, tzinfo=UTC)
        valid_from = stored.valid_from.isoformat()
    response = admin_browser.post(
        "/admin/pricing/delete",
        {"provider": "anthropic", "model": "house-model-7", "valid_from": valid_from},
    )
    assert response.status_code == 303
    with database.session(write=False) as session:
        assert session.scalar(select(PriceOverrideRow)) is None


def test_each_consumption_bar_names_the_period_it_counts(admin_browser, make_tenant):
    """Issue 15, item 17: the credits bar counts the license's term, a monthly USD budget
    the month (NOW is 2026-11-18 12:00 UTC); both in the billing time zone."""
    tenant = make_tenant(
        license={
            "valid_from": datetime(2026, 10, 10, tzinfo=UTC),
            "valid_until": datetime(2027, 4, 10, tzinfo=UTC),
            "budget_period": "monthly",
        }
    )
    for path in ("", "/usage"):
        html = admin_browser.get(f"/organizations/{tenant.org_id}{path}").text
        periods = _bar_periods(html)
        # Babel's intervals join with an en dash.
        assert periods["Credits"] == "Oct 10, 2026 \u2013 Apr 9, 2027 · UTC · ends in 5 months"
        assert periods["USD budget"] == "Nov 1 \u2013 30, 2026 · UTC · resets in 2 weeks"


def _bar_periods(html: str) -> dict[str, str]:
    """Each meter's label and the text of its period line, spaces made plain."""
    found = {}
    for meter in html.split('<div class="meter ')[1:]:
        label = read(meter.split('class="meter-label">')[1].split("<")[0]).text
        period = meter.split('class="meter-period"')[1].split("</p>")[0].split(">", 1)[1]
        found[label] = " ".join(read(period).text.replace("\u2009", " ").split())
    return found


def test_the_forecast_of_a_monthly_budget_ends_with_the_month(admin_browser, make_tenant):
    """Issue 15, item 16, as the page says it: 0.71 a day never exhausts 60 this month."""
    tenant = make_tenant(
        license={
            "credits_total": Decimal(0),
            "token_budget_usd": Decimal(60),
            "valid_from": datetime(2026, 10, 1, tzinfo=UTC),
        }
    )
    ingest(
        admin_browser.client,
        tenant,
        *(event("0.71", at=NOW - timedelta(days=d, hours=1)) for d in range(7)),
    )
    page = read(admin_browser.get(f"/organizations/{tenant.org_id}").text)
    # 4.97 + 0.71 x 12.5 days = 13.845, shown as $13.84 (half to even).
    assert "USD budget at this pace: $13.84 of $60.00 by Nov 30, 2026" in page.texts
    assert not any("runs out" in text for text in page.texts)
