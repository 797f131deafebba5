"""Demo data: organizations, licenses and months of refreshes, through the real ingest path."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from tokenledger.config import Settings
from tokenledger.db import utcnow
from tokenledger.licenses import service as licenses
from tokenledger.licenses.schemas import LicenseCreate
from tokenledger.organizations import service as organizations
from tokenledger.organizations.models import Organization
from tokenledger.organizations.schemas import OrganizationCreate
from tokenledger.usage.refreshes import record_refresh
from tokenledger.usage.schemas import RefreshIn, UsageBatch, UsageEventIn
from tokenledger.usage.service import record_batch

# name, slug, credits, USD per credit, USD budget, period, enforcement, refreshes per day
DEMO_ORGS = (
    ("Nordlicht Energie GmbH", "nordlicht-energie", 50_000, "0.01", "400", "monthly", "hard", 9),
    ("Hafenstadt Logistik AG", "hafenstadt-logistik", 20_000, "0.01", "150", "monthly", "soft", 6),
    ("Alpenblick Versicherung", "alpenblick", 120_000, "0.008", "900", "monthly", "soft", 12),
    ("Rheinwerk Medien", "rheinwerk-medien", 8_000, "0.012", "60", "monthly", "hard", 5),
    ("Bergmann & Söhne", "bergmann-soehne", 5_000, "0.01", "500", "license", "soft", 2),
    ("Elbtal Kliniken", "elbtal-kliniken", 30_000, "0.01", None, "monthly", "soft", 4),
    ("Küstenwind Stiftung", "kuestenwind", None, None, None, None, None, 3),
)
MODELS = (
    ("claude-sonnet-4-5", 0.70),
    ("claude-haiku-4-5", 0.25),
    ("claude-opus-4-1", 0.05),
)
DAYS = 120


def load_demo_data(session: Session, settings: Settings, seed: int = 7) -> str:
    """Load the demo set once; a second run changes nothing."""
    slugs = [row[1] for row in DEMO_ORGS]
    existing = session.scalars(select(Organization.slug).where(Organization.slug.in_(slugs)))
    if existing.first() is not None:
        return "already present, nothing changed"
    rng = random.Random(seed)
    now = utcnow().replace(microsecond=0)
    start = now - timedelta(days=DAYS)
    events = refreshes = 0
    for name, slug, credits, per_credit, budget, period, enforcement, per_day in DEMO_ORGS:
        org = organizations.create(session, OrganizationCreate(name=name, slug=slug))
        if credits is not None:
            licenses.create(
                session,
                LicenseCreate(
                    organization_id=org.id,
                    valid_from=start - timedelta(days=1),
                    credits_total=Decimal(credits),
                    cost_per_credit=Decimal(per_credit or "0.01"),
                    token_budget_usd=Decimal(budget) if budget else None,
                    budget_period=period or "monthly",
                    enforcement=enforcement or "soft",
                ),
            )
        batch: list[UsageEventIn] = []
        for day in range(DAYS):
            for run in range(max(0, int(rng.gauss(per_day, per_day / 3)))):
                at = start + timedelta(days=day, seconds=rng.randrange(86_400))
                if at > now - timedelta(minutes=1):
                    continue
                refresh_id = f"demo-{slug}-{day}-{run}"
                for call in range(rng.randint(2, 5)):
                    model = rng.choices([m for m, _ in MODELS], [w for _, w in MODELS])[0]
                    cached = rng.random() < 0.6
                    batch.append(
                        UsageEventIn(
                            id=f"{refresh_id}-{call}",
                            organization=slug,
                            timestamp=at + timedelta(seconds=call * 20),
                            model=model,
                            input_tokens=rng.randint(800, 6_000),
                            output_tokens=rng.randint(200, 2_500),
                            cache_read_input_tokens=rng.randint(5_000, 40_000) if cached else 0,
                            cache_creation_input_tokens=0 if cached else rng.randint(2_000, 9_000),
                            refresh_id=refresh_id,
                        )
                    )
                failed = rng.random() < 0.04
                record_refresh(
                    session,
                    org,
                    refresh_id,
                    RefreshIn(
                        status="failed" if failed else "completed",
                        started_at=at,
                        finished_at=at + timedelta(seconds=rng.randint(40, 200)),
                    ),
                    settings.timezone,
                    now,
                )
                refreshes += 1
                if len(batch) >= 900:
                    events += _flush(session, batch, settings, now)
        events += _flush(session, batch, settings, now)
    # One unpriced model, so that the UI has something to show for it.
    events += _flush(
        session,
        [
            UsageEventIn(
                id="demo-unpriced-1",
                organization="rheinwerk-medien",
                timestamp=now - timedelta(days=2),
                model="claude-experimental-preview",
                input_tokens=1200,
                output_tokens=300,
            )
        ],
        settings,
        now,
    )
    return f"{len(DEMO_ORGS)} organizations, {refreshes} refreshes, {events} usage events"


def _flush(session: Session, batch: list[UsageEventIn], settings: Settings, now: datetime) -> int:
    if not batch:
        return 0
    answer = record_batch(
        session, UsageBatch(events=batch), key_org_id=None, settings=settings, now=now
    )
    batch.clear()
    return answer.created
