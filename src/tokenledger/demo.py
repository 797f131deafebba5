"""Demo data: organizations, licenses and six months of runs, through the real ingest path.

A fixed seed makes every load the same shape: a dozen organizations, some healthy, some
near or past their limits, one projected to run out, one with an unpriced model, one
without a license, one suspended; alerts with webhook deliveries in every state.

History reads as it would have happened: each organization (and its license) was created
the day before its first run, and each day's calls are written as of that day, so that
every alert is dated when its threshold was crossed. The models are current ones of the
bundled price data (none the Anthropic SDK lists as deprecated).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tokenledger.alerts.models import Webhook, WebhookDelivery
from tokenledger.alerts.webhooks import new_secret
from tokenledger.audit import service as audit
from tokenledger.auth.service import create_api_key
from tokenledger.config import Settings
from tokenledger.db import utcnow
from tokenledger.ledger.refreshes import record_refresh
from tokenledger.ledger.service import record_batch
from tokenledger.licenses import service as licenses
from tokenledger.licenses.schemas import LicenseCreate
from tokenledger.organizations import service as organizations
from tokenledger.organizations.models import Organization
from tokenledger.organizations.schemas import OrganizationCreate
from tokenledger.usage.schemas import RefreshIn, UsageBatch, UsageEventIn


@dataclass(frozen=True)
class DemoOrg:
    name: str
    slug: str
    runs_per_day: float
    credits: int | None = None  # None: no license
    per_credit: str = "0.01"
    budget: str | None = None  # monthly (or license-term) USD budget
    period: str = "monthly"
    enforcement: str = "soft"
    days: int = 183  # how long it has been a customer
    ramp: float = 1.0  # pace in the last two weeks, relative to before
    status: str = "active"
    ends_in_days: int | None = None


DEMO_ORGS = (
    DemoOrg(
        "Nordlicht Energie GmbH", "nordlicht-energie", 4, 60_000, "0.01", "30", enforcement="hard"
    ),
    DemoOrg("Hafenstadt Logistik AG", "hafenstadt-logistik", 4, 40_000, "0.01", "14"),
    DemoOrg("Alpenblick Versicherung", "alpenblick", 7, 150_000, "0.008", "60"),
    DemoOrg("Rheinwerk Medien", "rheinwerk-medien", 3, 30_000, "0.012", "6", enforcement="hard"),
    DemoOrg("Bergmann & Söhne", "bergmann-soehne", 1.5, 3_000, "0.01", "70", period="license"),
    DemoOrg("Elbtal Kliniken", "elbtal-kliniken", 2.5, 6_000, "0.01", None),
    DemoOrg("Küstenwind Stiftung", "kuestenwind", 1),
    DemoOrg(
        "Sonnenhof Hotels",
        "sonnenhof-hotels",
        1.5,
        50_000,
        "0.01",
        "40",
        period="license",
        ramp=4.0,
        ends_in_days=20,
    ),
    DemoOrg("Falkenstein Software", "falkenstein-software", 2.5, 4_000, "0.01", None),
    DemoOrg("Mainufer Bank", "mainufer-bank", 5, 200_000, "0.009", "40", enforcement="hard"),
    DemoOrg("Isartal Robotik", "isartal-robotik", 2, 20_000, "0.01", "40", days=20),
    DemoOrg("Weserbogen Verlag", "weserbogen-verlag", 1, 10_000, "0.01", "20", status="suspended"),
)
# (model, share of calls, whether the API writes prompt caches explicitly): Anthropic's
# current family, and an OpenAI model whose cache is automatic (reads only).
MODELS = (
    ("claude-sonnet-5-5", 0.58, True),
    ("claude-haiku-5-5", 0.25, True),
    ("claude-opus-5-5", 0.07, True),
    ("gpt-5.5", 0.10, False),
)
DEMO_WEBHOOK = "https://hooks.example.com/tokenledger"
# Whose changes the demo data are, in the audit log.
DEMO = audit.Operator("demo-data")


def load_demo_data(
    session: Session, settings: Settings, seed: int = 7, now: datetime | None = None
) -> str:
    """Load the demo set once (as of `now`, default the clock); a second run changes nothing."""
    slugs = [org.slug for org in DEMO_ORGS]
    existing = session.scalars(select(Organization.slug).where(Organization.slug.in_(slugs)))
    if existing.first() is not None:
        return "already present, nothing changed"
    rng = random.Random(seed)
    now = (now or utcnow()).replace(microsecond=0)
    # An endpoint for the alerts (example.com never answers: deliveries show retries).
    hook = Webhook(url=DEMO_WEBHOOK, secret=new_secret(), description="Demo: on-call channel")
    session.add(hook)
    session.flush()
    events = refreshes = 0
    for demo in DEMO_ORGS:
        start = now - timedelta(days=demo.days)
        # Signed up the day before the first run.
        onboarded = start - timedelta(days=1)
        org = organizations.create(
            session, OrganizationCreate(name=demo.name, slug=demo.slug), actor=DEMO
        )
        org.created_at = onboarded
        session.flush()
        if demo.credits is not None:
            lic = licenses.create(
                session,
                LicenseCreate(
                    organization_id=org.id,
                    status=demo.status,
                    valid_from=onboarded,
                    valid_until=(
                        now + timedelta(days=demo.ends_in_days) if demo.ends_in_days else None
                    ),
                    credits_total=Decimal(demo.credits),
                    cost_per_credit=Decimal(demo.per_credit),
                    token_budget_usd=Decimal(demo.budget) if demo.budget else None,
                    budget_period=demo.period,
                    enforcement=demo.enforcement,
                ),
                onboarded,
                actor=DEMO,
            )
            lic.created_at = lic.updated_at = onboarded
            session.flush()
        batch: list[UsageEventIn] = []
        for day in range(demo.days):
            pace = demo.runs_per_day * (demo.ramp if demo.days - day <= 14 else 1.0)
            for run in range(max(0, round(rng.gauss(pace, pace / 3)))):
                at = start + timedelta(days=day, seconds=rng.randrange(86_400))
                if at > now - timedelta(minutes=5):
                    continue
                refresh_id = f"demo-{demo.slug}-{day}-{run}"
                batch.extend(_calls(rng, demo.slug, refresh_id, at))
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
            # The day's calls as of the end of that day (or now, for today): the alerts
            # they set off are dated then.
            day_end = min(start + timedelta(days=day + 1), now)
            events += _flush(session, batch, settings, day_end)
    # One model nobody can price, so that the UI has something to show for it.
    events += _flush(
        session,
        [
            UsageEventIn(
                id=f"demo-unpriced-{n}",
                organization="rheinwerk-medien",
                timestamp=now - timedelta(days=2, hours=n),
                model="claude-experimental-preview",
                input_tokens=1200 + n * 50,
                output_tokens=300,
            )
            for n in range(3)
        ],
        settings,
        now,
    )
    _settle_some_deliveries(session, now)
    # Ingest keys as an operator has them (their secrets are not kept anywhere).
    create_api_key(session, "Production ingest (all organizations)", None, actor=DEMO)
    create_api_key(session, "Nordlicht worker", "nordlicht-energie", actor=DEMO)
    return f"{len(DEMO_ORGS)} organizations, {refreshes} refreshes, {events} usage events"


def _calls(rng: random.Random, slug: str, refresh_id: str, at: datetime) -> list[UsageEventIn]:
    calls = []
    for call in range(rng.randint(2, 4)):
        model, _share, writes = rng.choices(MODELS, [share for _, share, _ in MODELS])[0]
        cached = rng.random() < 0.65
        calls.append(
            UsageEventIn(
                id=f"{refresh_id}-{call}",
                organization=slug,
                timestamp=at + timedelta(seconds=call * 20),
                model=model,
                input_tokens=rng.randint(600, 4_000),
                output_tokens=rng.randint(150, 1_800),
                cache_read_input_tokens=rng.randint(4_000, 30_000) if cached else 0,
                cache_creation_input_tokens=0
                if cached or not writes
                else rng.randint(1_500, 7_000),
                refresh_id=refresh_id,
            )
        )
    return calls


def _settle_some_deliveries(session: Session, now: datetime) -> None:
    """Most demo deliveries went through seconds after their alert; the newest still retry
    against the demo host."""
    rows = session.execute(
        select(WebhookDelivery.id, WebhookDelivery.created_at).order_by(
            WebhookDelivery.created_at, WebhookDelivery.id
        )
    ).all()
    delivered, failing = rows[:-3], [delivery_id for delivery_id, _ in rows[-3:]]
    if delivered:
        session.execute(
            update(WebhookDelivery),
            [
                {
                    "id": delivery_id,
                    "status": "delivered",
                    "attempts": 1,
                    "last_status_code": 200,
                    "delivered_at": created + timedelta(seconds=2),
                }
                for delivery_id, created in delivered
            ],
        )
    if failing:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(failing))
            .values(
                attempts=3,
                last_status_code=503,
                last_error="HTTP 503",
                next_attempt_at=now + timedelta(minutes=2),
            )
        )


def _flush(session: Session, batch: list[UsageEventIn], settings: Settings, now: datetime) -> int:
    if not batch:
        return 0
    answer = record_batch(
        session, UsageBatch(events=batch), key_org_id=None, settings=settings, now=now
    )
    batch.clear()
    return answer.created
