"""Demo data reads as a history that happened: current models, organizations created
before their own usage, alerts dated when their threshold was crossed.

Reported from outside: the demo used claude-sonnet-4-5 (which the Anthropic SDK lists as
reaching end of life on 30 November 2026), organizations showed "created" on the day of
loading above six months of their own usage, and every alert was dated at load time.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from anthropic._data import DEPRECATED_MODELS
from sqlalchemy import func, select

from tests.conftest import make_settings
from tokenledger.alerts.models import Alert
from tokenledger.db import Database
from tokenledger.demo import load_demo_data
from tokenledger.licenses.models import License
from tokenledger.organizations.models import Organization
from tokenledger.usage.models import Refresh, UsageEvent, UsagePrice

# The demo is the same writes on either database, each tested on both elsewhere; loading
# it on PostgreSQL took 93 of the suite's seconds for no further check.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

LOADED_AT = datetime(2026, 12, 16, 9, 30, tzinfo=UTC)
UNPRICED_DEMO_MODEL = "claude-experimental-preview"  # the one the UI shows as unpriced


def test_the_demo_is_a_plausible_history(database_url, database: Database) -> None:
    settings = make_settings(database_url, backfill_max_age_days=400)
    with database.session(write=True) as session:
        load_demo_data(session, settings, now=LOADED_AT)

    with database.session(write=False) as session:
        models = dict(
            session.execute(
                select(UsagePrice.model, func.min(UsagePrice.pricing)).group_by(UsagePrice.model)
            ).all()
        )
        providers = set(session.scalars(select(UsagePrice.provider)))
        first_use = dict(
            session.execute(
                select(UsageEvent.organization_id, func.min(UsageEvent.timestamp)).group_by(
                    UsageEvent.organization_id
                )
            ).all()
        )
        first_run = dict(
            session.execute(
                select(Refresh.organization_id, func.min(Refresh.started_at)).group_by(
                    Refresh.organization_id
                )
            ).all()
        )
        orgs = session.scalars(select(Organization)).all()
        org_licenses = session.scalars(select(License)).all()
        alerts = session.scalars(select(Alert)).all()
        events = session.execute(
            select(
                UsageEvent.license_id,
                UsageEvent.year_month,
                UsageEvent.timestamp,
                UsageEvent.cost_nano,
                UsageEvent.credits_micro,
            ).where(UsageEvent.license_id.is_not(None))
        ).all()

    # Current models only: priced by the bundled data, none the SDK calls deprecated.
    assert models.pop(UNPRICED_DEMO_MODEL) == "unpriced"
    assert models, "no demo usage"
    for model, pricing in models.items():
        assert pricing == "priced", model
        assert model not in DEPRECATED_MODELS, model
    assert {"anthropic", "openai"} <= providers

    # Every organization and license exists before its first call and its first run.
    assert len(orgs) == 12
    for org in orgs:
        created = org.created_at.replace(tzinfo=org.created_at.tzinfo or UTC)
        for first in (first_use.get(org.id), first_run.get(org.id)):
            if first is not None:
                assert created <= first.replace(tzinfo=first.tzinfo or UTC), org.slug
    for lic in org_licenses:
        if lic.id in {e.license_id for e in events}:
            first = min(e.timestamp for e in events if e.license_id == lic.id)
            assert lic.valid_from <= first
            assert lic.created_at.replace(tzinfo=UTC) <= first.replace(tzinfo=first.tzinfo or UTC)

    # Alerts: dated in the past, when the events that crossed the threshold came in:
    # the period's spend up to the alert reaches it, a day earlier it did not.
    assert alerts, "the demo shows alerts"
    assert all(a.created_at.replace(tzinfo=UTC) <= LOADED_AT for a in alerts)
    assert len({a.created_at for a in alerts}) > 1, "all alerts dated at one instant"
    by_id = {lic.id: lic for lic in org_licenses}
    by_license: dict[int, list[tuple[str, datetime, int, int]]] = defaultdict(list)
    for license_id, month, at, cost, credits in events:
        by_license[license_id].append((month, at.replace(tzinfo=at.tzinfo or UTC), cost, credits))
    checked = 0
    for alert in alerts:
        if alert.type == "budget.forecast":
            continue
        lic = by_id[alert.license_id]
        kind, level = alert.type.split(".")
        if kind == "budget":
            assert lic.token_budget_nano is not None
            whole, column = lic.token_budget_nano, 2
        else:
            whole, column = lic.credits_total_micro, 3
        threshold = whole if level == "exhausted" else whole * lic.budget_warning_percent / 100
        at = alert.created_at.replace(tzinfo=UTC)
        in_period = [
            row
            for row in by_license[lic.id]
            if alert.period in ("license", row[0]) or kind == "credits"
        ]
        by_then = sum(row[column] or 0 for row in in_period if row[1] <= at)
        day_before = sum(row[column] or 0 for row in in_period if row[1] < at - timedelta(days=1))
        assert by_then >= threshold, (alert.type, alert.period, at)
        assert day_before < threshold, (alert.type, alert.period, at)
        checked += 1
    assert checked
