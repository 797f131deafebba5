"""Anthropic's usage and cost reports through the real SDK against the stand-in, set against
the ledger per UTC day and model; every expected figure is worked by hand below.

Prices: claude-sonnet-4-5 as published ($3 input, $15 output, $3.75 5-minute and $6 1-hour
cache writes, $0.30 cache reads per million tokens: the ledger's bundled price); the ledger
prices claude-haiku-4-5 at an operator override of $0.80 / $4, while Anthropic bills $1 / $5.

UTC day       provider (all accounts)                 ledger
2026-11-15    sonnet: 1.3M uncached, 0.1M out, $5.40   10 calls of 100k in / 10k out (23:30
              (acme $4.50, unmapped key $0.60,           UTC, the 16th in Berlin) = $4.50
              beta's workspace $0.30)
              haiku: 1M in, 1M out, $6.00              haiku 1M / 1M at the override = $4.80
2026-11-16    sonnet: 0.5M uncached, writes, reads      nothing (the ledger lacks the day)
              $1.50
2026-11-17    sonnet: 0.1M uncached, 40k 5m, 20k 1h,    two calls, 0.2M uncached, 20k out,
              50k reads, 10k out = $0.735                40k 5m, 20k 1h, 50k reads = $1.185
2026-11-18    today (partial): sonnet 10k, $0.03        nothing
"""

from __future__ import annotations

import json
import time
from datetime import date
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from tests.conftest import NOW
from tests.provider_reports.conftest import ingest
from tests.provider_reports.standin import StandIn, cost_item, usage_item

from tokenledger.alerts.models import Alert, Webhook, WebhookDelivery
from tokenledger.alerts.webhooks import new_secret
from tokenledger.audit.models import AuditEntry
from tokenledger.config import Settings
from tokenledger.db import Database
from tokenledger.errors import DomainError
from tokenledger.provider_reports import service
from tokenledger.provider_reports.api import ComparisonRead
from tokenledger.provider_reports.models import ProviderReportRow, ProviderSync

SONNET, HAIKU = "claude-sonnet-4-5", "claude-haiku-4-5"
FIRST, LAST = date(2026, 11, 15), date(2026, 11, 18)
ACME, DEFAULT = "apikey_acme", "wrkspc_default"


def provider_reports(standin: StandIn, day16_cents: str = "150") -> None:
    standin.anthropic_usage = [
        usage_item("2026-11-15", SONNET, ACME, DEFAULT, uncached=1_000_000, output=100_000),
        usage_item("2026-11-15", SONNET, "apikey_stray", "wrkspc_default", uncached=200_000),
        usage_item("2026-11-15", SONNET, "apikey_beta1", "wrkspc_beta", uncached=100_000),
        usage_item("2026-11-15", HAIKU, ACME, DEFAULT, uncached=1_000_000, output=1_000_000),
        usage_item(
            "2026-11-16", SONNET, ACME, DEFAULT,
            uncached=500_000, write_5m=100_000, write_1h=100_000, reads=1_000_000, web_searches=3,
        ),
        usage_item(
            "2026-11-17", SONNET, ACME, DEFAULT,
            uncached=100_000, write_5m=40_000, write_1h=20_000, reads=50_000, output=10_000,
        ),
        usage_item("2026-11-18", SONNET, ACME, DEFAULT, uncached=10_000),
    ]  # fmt: skip
    standin.anthropic_cost = [
        cost_item("2026-11-15", SONNET, ACME, DEFAULT, "450"),
        cost_item("2026-11-15", SONNET, "apikey_stray", "wrkspc_default", "60"),
        cost_item("2026-11-15", SONNET, "apikey_beta1", "wrkspc_beta", "30"),
        cost_item("2026-11-15", HAIKU, ACME, DEFAULT, "600"),
        cost_item("2026-11-16", SONNET, ACME, DEFAULT, day16_cents),
        cost_item("2026-11-17", SONNET, ACME, DEFAULT, "73.5"),
        cost_item("2026-11-18", SONNET, ACME, DEFAULT, "3"),
    ]


def ledger_usage(client: TestClient, orgs: dict[str, Any], admin_headers: dict[str, str]) -> None:
    override = client.put(
        f"/api/pricing/overrides/anthropic/{HAIKU}",
        json={"input": "0.80", "output": "4", "valid_from": "2026-01-01T00:00:00Z"},
        headers=admin_headers,
    )
    assert override.status_code in (200, 201), override.text
    ingest(
        client,
        orgs["key"],
        [
            {"id": "e2", "organization": "acme", "model": HAIKU,
             "timestamp": "2026-11-15T10:00:00Z",
             "input_tokens": 1_000_000, "output_tokens": 1_000_000},
            {"id": "e3", "organization": "acme", "model": SONNET,
             "timestamp": "2026-11-17T08:00:00Z",
             "input_tokens": 50_000, "output_tokens": 10_000, "cache_read_input_tokens": 50_000,
             "cache_creation_input_tokens": 60_000,
             "cache_creation": {"ephemeral_5m_input_tokens": 40_000,
                                "ephemeral_1h_input_tokens": 20_000}},
            {"id": "e4", "organization": "acme", "model": SONNET,
             "timestamp": "2026-11-17T09:00:00Z",
             "input_tokens": 150_000, "output_tokens": 10_000},
            # Ten calls of 100k in / 10k out at 23:30 UTC (the 16th in Berlin): each prompt
            # stays under the 200k long-context threshold, where another rate would apply.
            *[
                {"id": f"e1-{n}", "organization": "acme", "model": SONNET,
                 "timestamp": f"2026-11-15T23:30:{n:02d}Z", "input_tokens": 100_000,
                 "output_tokens": 10_000}
                for n in range(10)
            ],
        ],
    )  # fmt: skip


def map_accounts(client: TestClient, orgs: dict[str, Any], admin_headers: dict[str, str]) -> None:
    for kind, external, org in (
        ("api_key", "apikey_acme", "acme"),
        ("workspace", "wrkspc_beta", "beta"),
    ):
        answer = client.put(
            f"/api/provider-reports/accounts/anthropic/{kind}/{external}",
            json={"organization_id": orgs[org]},
            headers=admin_headers,
        )
        assert answer.status_code == 200, answer.text


def run_sync(database: Database, settings: Settings, **options: Any) -> service.SyncResult:
    client = service.sdk_client(settings, "anthropic", max_retries=2, strict=True)
    try:
        return service.sync(
            database,
            settings,
            "anthropic",
            FIRST,
            LAST,
            NOW,
            actor="test",
            client=client,
            **options,
        )
    finally:
        client.close()


def comparison(client: TestClient, headers: dict[str, str], **extra: Any) -> dict[str, Any]:
    params = {"provider": "anthropic", "from": "2026-11-15", "to": "2026-11-18", **extra}
    answer = client.get("/api/provider-reports/comparison", params=params, headers=headers)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def row(body: dict[str, Any], day: str, model: str) -> dict[str, Any]:
    found = [r for r in body["rows"] if r["day"] == day and r["model"] == model]
    assert len(found) == 1, (day, model, body["rows"])
    return found[0]


@pytest.fixture
def synced(
    fixed_client: TestClient,
    database: Database,
    settings: Settings,
    standin: StandIn,
    orgs: dict[str, Any],
    admin_headers: dict[str, str],
) -> service.SyncResult:
    with database.session(write=True) as session:
        session.add(Webhook(url="https://hooks.example.com/in", secret=new_secret()))
    provider_reports(standin)
    ledger_usage(fixed_client, orgs, admin_headers)
    map_accounts(fixed_client, orgs, admin_headers)
    return run_sync(database, settings)


def test_the_comparison_per_utc_day_and_model_is_worked_by_hand(
    synced: service.SyncResult,
    fixed_client: TestClient,
    admin_headers: dict[str, str],
    standin: StandIn,
) -> None:
    assert synced.days == 4
    assert synced.partial_days == ["2026-11-18"]
    # Several pages of each report were followed (2 rows a page: 7 rows -> 4 pages each).
    paths = [path for _at, path, _status in standin.requests]
    assert paths.count("/v1/organizations/analytics/usage") == 4
    assert paths.count("/v1/organizations/analytics/cost") == 4
    body = comparison(fixed_client, admin_headers)
    assert body["timezone"] == "UTC"
    ComparisonRead.model_validate(body)  # the documented shape

    sonnet15 = row(body, "2026-11-15", SONNET)
    assert sonnet15["provider"]["uncached_input_tokens"] == 1_300_000
    assert sonnet15["provider"]["cost_usd"] == "5.40"
    # The event at 23:30 UTC is the 16th in Berlin, and still the 15th here.
    assert sonnet15["ledger"]["uncached_input_tokens"] == 1_000_000
    assert sonnet15["ledger"]["cost_usd"] == "4.50"
    assert sonnet15["coverage"]["uncached_input_tokens"] == "0.7692"  # 1.0 / 1.3
    assert sonnet15["coverage"]["output_tokens"] == "1.0000"
    assert sonnet15["coverage"]["cost_usd"] == "0.8333"  # 4.50 / 5.40
    assert sonnet15["coverage"]["cache_read_tokens"] is None  # the provider counted none
    assert sonnet15["drift_usd"] == "0.90"
    assert sonnet15["drift_percent"] == "16.67"  # 0.90 / 5.40

    haiku15 = row(body, "2026-11-15", HAIKU)  # priced differently by the ledger
    assert haiku15["ledger"]["cost_usd"] == "4.80"  # 1M x 0.80 + 1M x 4 per million
    assert haiku15["coverage"]["uncached_input_tokens"] == "1.0000"
    assert haiku15["coverage"]["cost_usd"] == "0.8000"
    assert haiku15["drift_usd"] == "1.20"
    assert haiku15["drift_percent"] == "20.00"

    lacking = row(body, "2026-11-16", SONNET)  # the ledger lacks the day entirely
    assert lacking["ledger"]["cost_usd"] == "0.00"
    assert lacking["provider"]["cache_write_5m_tokens"] == 100_000
    assert lacking["provider"]["web_search_requests"] == 3
    assert lacking["ledger"]["web_search_requests"] is None
    assert lacking["coverage"]["cache_read_tokens"] == "0.0000"
    assert lacking["drift_usd"] == "1.50"
    assert lacking["drift_percent"] == "100.00"

    more = row(body, "2026-11-17", SONNET)  # the ledger has more than the provider
    assert more["ledger"]["uncached_input_tokens"] == 200_000
    assert more["ledger"]["cache_write_5m_tokens"] == 40_000
    assert more["ledger"]["cache_write_1h_tokens"] == 20_000
    # (50k + 150k) x 3 + 20k x 15 + 40k x 3.75 + 20k x 6 + 50k x 0.30, per million = 1.185
    assert more["ledger"]["cost_usd"] == "1.185"
    assert more["provider"]["cost_usd"] == "0.735"
    assert more["coverage"]["uncached_input_tokens"] == "2.0000"
    assert more["coverage"]["cache_write_1h_tokens"] == "1.0000"
    assert more["coverage"]["cost_usd"] == "1.6122"  # 1.185 / 0.735
    assert more["drift_usd"] == "-0.45"
    assert more["drift_percent"] == "-61.22"

    today = row(body, "2026-11-18", SONNET)
    assert today["partial"] is True
    days = {day["day"]: day for day in body["days"]}
    assert days["2026-11-15"]["drift_usd"] == "2.10"  # 11.40 - 9.30
    assert days["2026-11-15"]["drift_percent"] == "18.42"
    assert body["provider_cost_usd"] == "13.665"  # 11.40 + 1.50 + 0.735 + 0.03
    assert body["ledger_cost_usd"] == "10.485"  # 9.30 + 1.185


def test_mapped_organizations_and_the_unassigned_key(
    synced: service.SyncResult,
    fixed_client: TestClient,
    admin_headers: dict[str, str],
    orgs: dict[str, Any],
) -> None:
    acme = comparison(fixed_client, admin_headers, organization_id=orgs["acme"])
    sonnet = row(acme, "2026-11-15", SONNET)
    assert sonnet["provider"]["uncached_input_tokens"] == 1_000_000  # its key only
    assert sonnet["provider"]["cost_usd"] == "4.50"
    assert sonnet["drift_usd"] == "0.00"
    assert sonnet["coverage"]["uncached_input_tokens"] == "1.0000"
    beta = comparison(fixed_client, admin_headers, organization_id=orgs["beta"])
    # Beta's usage is that of its workspace, through a key nobody mapped.
    assert [(r["day"], r["model"]) for r in beta["rows"]] == [("2026-11-15", SONNET)]
    assert beta["rows"][0]["provider"]["cost_usd"] == "0.30"
    assert beta["rows"][0]["coverage"]["uncached_input_tokens"] == "0.0000"

    accounts = fixed_client.get(
        "/api/provider-reports/accounts", params={"provider": "anthropic"}, headers=admin_headers
    ).json()
    by_id = {(a["kind"], a["external_id"]): a for a in accounts}
    assert by_id[("api_key", "apikey_stray")]["organization_id"] is None
    assert by_id[("api_key", "apikey_stray")]["first_seen_day"] == "2026-11-15"
    assert by_id[("api_key", "apikey_acme")]["last_seen_day"] == "2026-11-18"
    assert by_id[("workspace", "wrkspc_beta")]["organization_id"] == orgs["beta"]


def test_a_day_no_sync_holds_stays_out_and_a_model_only_the_ledger_has_is_a_row(
    synced: service.SyncResult,
    fixed_client: TestClient,
    admin_headers: dict[str, str],
    orgs: dict[str, Any],
) -> None:
    ingest(
        fixed_client,
        orgs["key"],
        [
            # The 14th: in the range asked, but no sync holds it.
            {"id": "e-14", "organization": "acme", "model": SONNET,
             "timestamp": "2026-11-14T12:00:00Z", "input_tokens": 100_000,
             "output_tokens": 10_000},
            # Haiku on the 17th, which the provider's reports of that day do not name:
            # 100k x 0.80 + 10k x 4 per million (the override) = $0.12.
            {"id": "e-haiku-17", "organization": "acme", "model": HAIKU,
             "timestamp": "2026-11-17T12:00:00Z", "input_tokens": 100_000,
             "output_tokens": 10_000},
        ],
    )  # fmt: skip
    for extra in ({}, {"organization_id": orgs["acme"]}):
        body = comparison(fixed_client, admin_headers, **{"from": "2026-11-14", **extra})
        assert body["from"] == "2026-11-14"
        assert [day["day"] for day in body["days"]] == [
            "2026-11-15",
            "2026-11-16",
            "2026-11-17",
            "2026-11-18",
        ]
        assert [(r["day"], r["model"]) for r in body["rows"]] == [
            ("2026-11-15", HAIKU),
            ("2026-11-15", SONNET),
            ("2026-11-16", SONNET),
            ("2026-11-17", HAIKU),
            ("2026-11-17", SONNET),
            ("2026-11-18", SONNET),
        ]
        haiku17 = row(body, "2026-11-17", HAIKU)
        assert haiku17["partial"] is False
        assert haiku17["provider"]["uncached_input_tokens"] == 0
        assert haiku17["provider"]["cost_usd"] == "0.00"
        assert haiku17["ledger"]["uncached_input_tokens"] == 100_000
        assert haiku17["ledger"]["output_tokens"] == 10_000
        assert haiku17["ledger"]["cost_usd"] == "0.12"
        assert haiku17["ledger"]["unpriced_events"] == 0
        assert haiku17["coverage"]["uncached_input_tokens"] is None  # the provider: none
        assert haiku17["coverage"]["cost_usd"] is None
        assert haiku17["drift_usd"] == "-0.12"
        assert haiku17["drift_percent"] is None
        day17 = {day["day"]: day for day in body["days"]}["2026-11-17"]
        assert day17["ledger_cost_usd"] == "1.305"  # 1.185 + 0.12
        assert day17["drift_usd"] == "-0.57"  # 0.735 - 1.305
    # All accounts: the 14th's $0.45 is in no figure.
    everyone = comparison(fixed_client, admin_headers, **{"from": "2026-11-14"})
    assert everyone["ledger_cost_usd"] == "10.605"  # 10.485 + 0.12
    assert everyone["provider_cost_usd"] == "13.665"


def test_a_keys_own_mapping_wins_over_its_workspaces(
    synced: service.SyncResult,
    fixed_client: TestClient,
    admin_headers: dict[str, str],
    orgs: dict[str, Any],
) -> None:
    def map_key(organization_id: int | None) -> None:
        answer = fixed_client.put(
            "/api/provider-reports/accounts/anthropic/api_key/apikey_beta1",
            json={"organization_id": organization_id},
            headers=admin_headers,
        )
        assert answer.status_code == 200, answer.text

    # Beta's workspace's only row is through apikey_beta1: mapped to acme, it is acme's.
    map_key(orgs["acme"])
    beta = comparison(fixed_client, admin_headers, organization_id=orgs["beta"])
    assert beta["rows"] == []
    assert beta["provider_cost_usd"] == "0.00"
    acme = comparison(fixed_client, admin_headers, organization_id=orgs["acme"])
    sonnet = row(acme, "2026-11-15", SONNET)
    assert sonnet["provider"]["uncached_input_tokens"] == 1_100_000  # 1.0M + 0.1M
    assert sonnet["provider"]["cost_usd"] == "4.80"  # 4.50 + 0.30
    # Unassigned again (the account stays, with no organization): the workspace's.
    map_key(None)
    beta = comparison(fixed_client, admin_headers, organization_id=orgs["beta"])
    assert [(r["day"], r["model"]) for r in beta["rows"]] == [("2026-11-15", SONNET)]
    assert beta["rows"][0]["provider"]["cost_usd"] == "0.30"
    acme = comparison(fixed_client, admin_headers, organization_id=orgs["acme"])
    assert row(acme, "2026-11-15", SONNET)["provider"]["cost_usd"] == "4.50"


def test_closed_days_over_the_threshold_alert_once(
    synced: service.SyncResult,
    database: Database,
    settings: Settings,
    fixed_client: TestClient,
    admin_headers: dict[str, str],
) -> None:
    alerts = fixed_client.get(
        "/api/alerts", params={"type": "provider.drift"}, headers=admin_headers
    ).json()["items"]
    # The 18th drifts 100 % too, but is not over.
    assert sorted(a["period"] for a in alerts) == ["2026-11-15", "2026-11-16", "2026-11-17"]
    day15 = next(a for a in alerts if a["period"] == "2026-11-15")
    assert day15["organization_id"] is None
    assert day15["details"]["drift_usd"] == "2.10"
    assert day15["details"]["drift_percent"] == "18.42"
    assert len(synced.alerts) == 3
    # Queued for the webhook in the sync's transaction, as an alert of no organization.
    with database.session(write=False) as session:
        payloads = [json.loads(d.payload) for d in session.scalars(select(WebhookDelivery))]
    assert sorted(p["period"] for p in payloads) == ["2026-11-15", "2026-11-16", "2026-11-17"]
    assert {(p["type"], p["organization"], p["license_id"]) for p in payloads} == {
        ("provider.drift", None, None)
    }
    again = run_sync(database, settings)
    assert again.alerts == []
    with database.session(write=False) as session:
        count = session.scalar(
            select(func.count()).select_from(Alert).where(Alert.type == "provider.drift")
        )
    assert count == 3


def test_a_day_synced_again_replaces_its_figures_and_the_audit_log_keeps_the_old(
    synced: service.SyncResult,
    database: Database,
    settings: Settings,
    standin: StandIn,
    fixed_client: TestClient,
    admin_headers: dict[str, str],
) -> None:
    provider_reports(standin, day16_cents="200")
    second = run_sync(database, settings)
    body = comparison(fixed_client, admin_headers)
    assert row(body, "2026-11-16", SONNET)["provider"]["cost_usd"] == "2.00"
    assert row(body, "2026-11-15", SONNET)["provider"]["cost_usd"] == "5.40"  # not doubled
    with database.session(write=False) as session:
        entries = list(
            session.scalars(
                select(AuditEntry)
                .where(AuditEntry.entity_id == "anthropic:2026-11-16")
                .order_by(AuditEntry.id)
            )
        )
        # The first sync's rows are gone: only the second's are stored.
        syncs = set(session.scalars(select(ProviderReportRow.sync_id).distinct()))
    assert [e.before is None for e in entries] == [True, False]
    assert entries[1].before is not None
    assert entries[1].after is not None
    assert entries[1].before["models"][SONNET]["cost_usd"] == "1.50"
    assert entries[1].before["sync_id"] == synced.sync_id
    assert entries[1].after["models"][SONNET]["cost_usd"] == "2.00"
    assert syncs == {second.sync_id}


def test_a_429_is_retried_after_its_retry_after(
    database: Database, settings: Settings, standin: StandIn
) -> None:
    provider_reports(standin)
    standin.fail = [("/analytics/usage", 429, {"retry-after": "1"})]
    started = time.monotonic()
    result = run_sync(database, settings)
    assert result.rows == 7
    usage = [(at, status) for at, path, status in standin.requests if path.endswith("/usage")]
    assert [status for _at, status in usage[:2]] == [429, 200]
    assert usage[1][0] - usage[0][0] >= 1.0  # the SDK waited what retry-after said
    assert time.monotonic() - started >= 1.0


def test_a_failed_sync_stores_nothing_and_says_why(
    synced: service.SyncResult,
    database: Database,
    settings: Settings,
    standin: StandIn,
    fixed_client: TestClient,
    admin_headers: dict[str, str],
) -> None:
    before = comparison(fixed_client, admin_headers)
    provider_reports(standin, day16_cents="999")
    # The pages of the 15th to the 17th arrive and are written (chunks of one key and
    # more, at each day's end), then the cost report's last page keeps failing.
    standin.requests.clear()  # (the first sync's)
    standin.fail = [("/analytics/cost", 500, {}) for _ in range(3)]
    standin.fail_after = 3
    with pytest.raises(DomainError) as caught:
        run_sync(database, settings, chunk_rows=1)
    assert caught.value.status == 502
    assert "HTTP 500" in caught.value.message
    assert comparison(fixed_client, admin_headers) == before
    with database.session(write=False) as session:
        failed = session.scalars(select(ProviderSync).order_by(ProviderSync.id.desc())).first()
        assert failed is not None
        assert failed.status == "failed"
        assert failed.error is not None
        assert "500" in failed.error
        stored = session.scalar(select(func.count()).where(ProviderReportRow.sync_id == failed.id))
    assert stored == 0
    syncs = fixed_client.get("/api/provider-reports/syncs", headers=admin_headers).json()
    assert syncs[0]["status"] == "failed"
    assert settings.anthropic_admin_key is not None
    assert settings.anthropic_admin_key.get_secret_value() not in str(syncs)


def test_keys_split_across_chunks_and_days_out_of_order_add_up(
    database: Database,
    settings: Settings,
    standin: StandIn,
    fixed_client: TestClient,
    admin_headers: dict[str, str],
) -> None:
    """The sync writes a key's usage and cost once when they meet in a chunk; where they do
    not (a chunk of one key, reports whose days come in another order), the stored figures
    are the same sums."""
    provider_reports(standin)
    standin.anthropic_usage.reverse()  # the 18th first
    standin.anthropic_cost.sort(key=lambda item: item["group"]["api_key_id"])
    result = run_sync(database, settings, chunk_rows=1)
    assert result.rows == 7
    body = comparison(fixed_client, admin_headers)
    sonnet15 = row(body, "2026-11-15", SONNET)
    assert sonnet15["provider"]["uncached_input_tokens"] == 1_300_000  # 1M + 0.2M + 0.1M
    assert sonnet15["provider"]["output_tokens"] == 100_000
    assert sonnet15["provider"]["cost_usd"] == "5.40"  # 4.50 + 0.60 + 0.30
    lacking = row(body, "2026-11-16", SONNET)
    assert lacking["provider"]["cache_write_1h_tokens"] == 100_000
    assert lacking["provider"]["cost_usd"] == "1.50"
    assert body["provider_cost_usd"] == "13.665"  # 5.40 + 6.00 + 1.50 + 0.735 + 0.03
    with database.session(write=False) as session:
        stored = session.scalar(select(func.count()).select_from(ProviderReportRow))
    assert stored == 7  # one row per day, model and account, however it was written


def test_bad_requests_are_refused(
    fixed_client: TestClient, admin_headers: dict[str, str], viewer_headers: dict[str, str]
) -> None:
    base = "/api/provider-reports/comparison"
    cases = [
        ({"provider": "gemini", "from": "2026-11-01", "to": "2026-11-02"}, 422),
        ({"provider": "anthropic", "from": "2026-11-05", "to": "2026-11-01"}, 422),
        ({"provider": "anthropic", "from": "2024-01-01", "to": "2026-11-01"}, 422),
        ({"provider": "anthropic", "from": "2026-11-01", "to": "2026-11-02",
          "organization_id": 999}, 404),
    ]  # fmt: skip
    for params, status in cases:
        assert fixed_client.get(base, params=params, headers=admin_headers).status_code == status
    mapping = "/api/provider-reports/accounts/anthropic/api_key/apikey_x"
    refused = fixed_client.put(mapping, json={"organization_id": 1}, headers=viewer_headers)
    assert refused.status_code == 403
    unknown = fixed_client.put(mapping, json={"organization_id": 999}, headers=admin_headers)
    assert unknown.status_code == 404
    wrong_kind = fixed_client.put(
        "/api/provider-reports/accounts/anthropic/project/p1",
        json={"organization_id": None},
        headers=admin_headers,
    )
    assert wrong_kind.status_code == 422


def test_an_answer_not_in_the_sdks_shape_fails_the_sync(
    database: Database, settings: Settings, standin: StandIn
) -> None:
    provider_reports(standin)
    del standin.anthropic_usage[0]["usage"]["cache_creation"]
    with pytest.raises(DomainError) as caught:
        run_sync(database, settings)
    assert caught.value.status == 502
    assert "nothing was stored" in caught.value.message
    with database.session(write=False) as session:
        assert session.scalar(select(func.count()).select_from(ProviderReportRow)) == 0


def test_an_account_id_of_the_longest_allowed_length_is_mapped_and_audited(
    fixed_client: TestClient,
    database: Database,
    admin_headers: dict[str, str],
    make_tenant: Any,
) -> None:
    # Found by the schema fuzzing on PostgreSQL: 128 characters are allowed in the path, but
    # the audit entry named the account by provider:kind:id, too long for its 64 (a 500).
    tenant = make_tenant()
    external = "k" * 128
    answer = fixed_client.put(
        f"/api/provider-reports/accounts/anthropic/api_key/{external}",
        json={"organization_id": tenant.org_id},
        headers=admin_headers,
    )
    assert answer.status_code == 200, answer.text
    with database.session(write=False) as session:
        [entry] = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "provider_account.map")
        ).all()
    assert entry.after is not None
    assert entry.after["external_id"] == external
    assert entry.after["organization_id"] == tenant.org_id
