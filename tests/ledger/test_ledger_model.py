"""The ledger against a plain in-memory model, over random streams of batches.

Each example starts on an empty database (a fresh SQLite copy, or emptied PostgreSQL) with
three organizations: one with two licenses one after the other, one with a license that
begins later, one without. Batches mix new events, retries, resent batches, repeats inside
a batch and reused ids with other content; refreshes and credit adjustments come between.
After every step the database must agree with the model exactly: every monthly row, every
event's cost and credits, every license's credits_used.
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select

from tests.conftest import _empty_postgres, key_bearer, make_settings
from tests.factories import make_license, make_org
from tests.ledger.conftest import LONG_BACKFILL_DAYS, MONTHLY_FIELDS
from tokenledger.app import create_app
from tokenledger.auth.service import create_api_key
from tokenledger.licenses import service as licenses
from tokenledger.licenses.models import License
from tokenledger.organizations import service as organizations
from tokenledger.usage.models import TokenUsageMonthly, UsageEvent

# Instants, their month in Europe/Berlin, and which license of each org is in force
# ("A1", "A2", "B" or None), worked out by hand.
INSTANTS: dict[str, tuple[str, dict[str, str | None]]] = {
    "2025-12-31T23:00:00Z": ("2026-01", {"A": None, "B": None}),
    "2026-01-15T10:00:00Z": ("2026-01", {"A": "A1", "B": None}),
    "2026-01-31T23:30:00Z": ("2026-02", {"A": "A1", "B": None}),
    "2026-02-01T00:00:00Z": ("2026-02", {"A": "A1", "B": "B"}),
    "2026-03-31T21:59:59Z": ("2026-03", {"A": "A1", "B": "B"}),
    "2026-03-31T22:00:00Z": ("2026-04", {"A": "A2", "B": "B"}),
    "2026-10-31T23:30:00Z": ("2026-11", {"A": "A2", "B": "B"}),
}
LICENSES = {
    # name: (org, valid_from, valid_until, status); each example draws the cost per credit
    "A1": ("A", "2026-01-01T00:00:00Z", "2026-04-01T00:00:00+02:00", "expired"),
    "A2": ("A", "2026-04-01T00:00:00+02:00", None, "active"),
    "B": ("B", "2026-02-01T00:00:00Z", None, "active"),
}
# nano-USD per token (= USD per million tokens * 1000): input, output, 5m write,
# 1h write, cache read
RATES = {
    "claude-sonnet-4-5": (3000, 15000, 3750, 6000, 300),
    "claude-haiku-4-5": (1000, 5000, 1250, 2000, 100),
}
# Above 200_000 prompt tokens (input + cache reads + cache writes) every token of the
# request is priced at genai-prices' long-context tier of claude-sonnet-4-5 (haiku has none).
RATES_OVER_200K = {"claude-sonnet-4-5": (6000, 22500, 7500, 12000, 600)}
LONG_CONTEXT = 200_000
MODELS = [*RATES, "unknown-model"]
COSTS = st.one_of(
    st.sampled_from(["0", "0.000000015", "0.000000045", "0.01", "1.234567891", "0.5"]),
    st.decimals(min_value=0, max_value=1000, places=9).map(lambda d: format(d, "f")),
)
# Costs per credit: round ones, tiny ones (many divisions end on half a micro-credit),
# and any with 9 places.
# From the documented minimum, $0.0001 a credit (with 9 places: uneven divisions).
COSTS_PER_CREDIT = st.one_of(
    st.sampled_from(["0.01", "0.03", "0.007", "0.0001", "0.000100003", "3"]),
    st.decimals(min_value=Decimal("0.0001"), max_value=1000, places=9).map(
        lambda d: format(d, "f")
    ),
)
IDS = [f"e{n}" for n in range(8)]
REFRESH_IDS = ["r0", "r1"]


@dataclass
class Stored:
    canonical: str
    month: str
    license: str | None
    tokens: dict[str, int]
    api_calls: int
    cost_nano: int | None
    credits_micro: int | None


@dataclass
class Model:
    events: dict[tuple[str, str], Stored] = field(default_factory=dict)
    refreshes: dict[tuple[str, str], str | None] = field(default_factory=dict)
    adjustments: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    batches: list[list[dict[str, Any]]] = field(default_factory=list)

    def monthly(self) -> dict[tuple[str, str], dict[str, int]]:
        rows: dict[tuple[str, str], dict[str, int]] = defaultdict(
            lambda: dict.fromkeys(MONTHLY_FIELDS, 0)
        )
        for (org, _id), event in self.events.items():
            row = rows[(org, event.month)]
            for name, value in event.tokens.items():
                row[name] += value
            row["api_calls"] += event.api_calls
            row["event_count"] += 1
            row["cost_nano"] += event.cost_nano or 0
            row["unpriced_events"] += event.cost_nano is None
        for (org, _rid), month in self.refreshes.items():
            if month is not None:
                rows[(org, month)]["refresh_count"] += 1
        return {key: row for key, row in rows.items() if any(row.values())}

    def credits_used(self, license_name: str) -> int:
        return self.adjustments[license_name] + sum(
            event.credits_micro or 0
            for event in self.events.values()
            if event.license == license_name
        )


def credits_micro(cost_nano: int, cost_per_credit_nano: int) -> int:
    """Micro-credits by plain decimal division (not the project's integer rule):
    cost / cost_per_credit, rounded half to even to a micro-credit."""
    credits = Decimal(cost_nano) / Decimal(cost_per_credit_nano)  # the nanos cancel out
    return int(credits.quantize(Decimal("0.000001"), rounding=ROUND_HALF_EVEN) * 10**6)


def canonical(event: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in event.items() if k != "organization"}, sort_keys=True)


def expected_cost(event: dict[str, Any]) -> int | None:
    if "cost_usd" in event:
        return int(Decimal(event["cost_usd"]) * 10**9)
    rates = RATES.get(event["model"])
    if rates is None:
        return None
    split = event.get("cache_creation") or {}
    writes = event.get("cache_creation_input_tokens", sum(split.values()))
    write_1h = split.get("ephemeral_1h_input_tokens", 0)
    prompt = event.get("input_tokens", 0) + writes + event.get("cache_read_input_tokens", 0)
    if prompt > LONG_CONTEXT:
        rates = RATES_OVER_200K.get(event["model"], rates)
    input_rate, output_rate, write_5m_rate, write_1h_rate, read_rate = rates
    return (
        event.get("input_tokens", 0) * input_rate
        + event.get("output_tokens", 0) * output_rate
        + (writes - write_1h) * write_5m_rate
        + write_1h * write_1h_rate
        + event.get("cache_read_input_tokens", 0) * read_rate
    )


def new_event(data: st.DataObject, org: str) -> dict[str, Any]:
    at = data.draw(st.sampled_from(sorted(INSTANTS)))
    event: dict[str, Any] = {
        "id": data.draw(st.sampled_from(IDS)),
        "timestamp": at,
        "model": data.draw(st.sampled_from(MODELS)),
        "input_tokens": data.draw(st.integers(0, 5000)),
        "output_tokens": data.draw(st.integers(0, 2000)),
        "cache_read_input_tokens": data.draw(st.integers(0, 5000)),
        "api_calls": data.draw(st.integers(0, 3)),
    }
    write_5m, write_1h = data.draw(st.integers(0, 3000)), data.draw(st.integers(0, 3000))
    if data.draw(st.booleans()):
        event["cache_creation"] = {
            "ephemeral_5m_input_tokens": write_5m,
            "ephemeral_1h_input_tokens": write_1h,
        }
        if data.draw(st.booleans()):
            event["cache_creation_input_tokens"] = write_5m + write_1h
    else:
        event["cache_creation_input_tokens"] = write_5m
    if data.draw(st.booleans(), label="long prompt"):
        # A prompt around the long-context threshold: input makes up the rest of it.
        prompt = data.draw(
            st.one_of(
                st.sampled_from([LONG_CONTEXT - 1, LONG_CONTEXT, LONG_CONTEXT + 1]),
                st.integers(LONG_CONTEXT - 20_000, LONG_CONTEXT + 20_000),
            ),
            label="prompt",
        )
        split = event.get("cache_creation") or {}
        writes = event.get("cache_creation_input_tokens", sum(split.values()))
        event["input_tokens"] = prompt - writes - event["cache_read_input_tokens"]
    if data.draw(st.integers(0, 3)) == 0:
        event["cost_usd"] = data.draw(COSTS)
    return event


def changed(event: dict[str, Any]) -> dict[str, Any]:
    """The same id with other content."""
    return {**event, "output_tokens": event["output_tokens"] + 1}


class LedgerMachine(RuleBasedStateMachine):
    fresh_url: Callable[[], str]

    def __init__(self) -> None:
        super().__init__()
        url = type(self).fresh_url()
        app = create_app(
            make_settings(
                url, billing_timezone="Europe/Berlin", backfill_max_age_days=LONG_BACKFILL_DAYS
            )
        )
        self.database = app.state.database
        self.client = TestClient(app)
        self.model = Model()
        with self.database.session(write=True) as session:
            orgs = {name: make_org(session) for name in "ABC"}
            self.org_ids = {name: org.id for name, org in orgs.items()}
            self.slugs = {name: org.slug for name, org in orgs.items()}
        self.license_ids: dict[str, int] = {}
        self.cost_per_credit: dict[str, int] = {}
        with self.database.session(write=True) as session:
            _key, secret = create_api_key(session, "model", None, actor=None)
        self.headers = key_bearer(secret)
        self.org_of = {org_id: name for name, org_id in self.org_ids.items()}
        self.org_of_slug = {slug: name for name, slug in self.slugs.items()}

    def teardown(self) -> None:
        self.client.close()
        self.database.dispose()

    # --- rules ---------------------------------------------------------------------

    @initialize(data=st.data())
    def create_licenses(self, data: st.DataObject) -> None:
        """The licenses, each at a drawn cost per credit, before any usage is sent."""
        with self.database.session(write=True) as session:
            for name, (org, since, until, status) in LICENSES.items():
                per_credit = data.draw(COSTS_PER_CREDIT, label=f"cost_per_credit {name}")
                lic = make_license(
                    session,
                    organizations.get(session, self.org_ids[org]),
                    valid_from=since,
                    valid_until=until,
                    cost_per_credit=per_credit,
                    status=status,
                )
                self.license_ids[name] = lic.id
                # nano-USD by hand, independent of the service's conversion
                self.cost_per_credit[name] = int(Decimal(per_credit).scaleb(9))

    @rule(data=st.data())
    def send_batch(self, data: st.DataObject) -> None:
        events: list[dict[str, Any]] = []
        for _ in range(data.draw(st.integers(1, 6), label="size")):
            org = data.draw(st.sampled_from("ABC"))
            kind = data.draw(st.sampled_from(["new", "new", "retry", "repeat", "conflict"]))
            sent = [event for batch in self.model.batches for event in batch]
            if kind == "retry" and sent:
                event = data.draw(st.sampled_from(sent))
                event = self._refer(data, dict(event), self._org(event))
            elif kind == "repeat" and events:
                event = dict(data.draw(st.sampled_from(events)))
            elif kind == "conflict" and sent:
                event = data.draw(st.sampled_from(sent))
                event = self._refer(data, changed(event), self._org(event))
            else:
                event = self._refer(data, new_event(data, org), org)
            events.append(event)
        if data.draw(st.integers(0, 9), label="invalid") == 0:
            position = data.draw(st.integers(0, len(events) - 1))
            events[position] = {**events[position], "input_tokens": -1}
        self._send(events)

    @rule(data=st.data())
    def resend_a_batch(self, data: st.DataObject) -> None:
        if self.model.batches:
            self._send(data.draw(st.sampled_from(self.model.batches)))

    @rule(
        org=st.sampled_from("ABC"),
        refresh_id=st.sampled_from(REFRESH_IDS),
        status=st.sampled_from(["running", "completed", "failed"]),
        finished_at=st.sampled_from(sorted(INSTANTS)),
    )
    def report_refresh(self, org: str, refresh_id: str, status: str, finished_at: str) -> None:
        body: dict[str, Any] = {
            "organization": self.slugs[org],
            "status": status,
            "started_at": "2025-12-01T00:00:00Z",  # before every finished_at
        }
        if status != "running":
            body["finished_at"] = finished_at
        response = self.client.put(
            f"/api/v1/refreshes/{refresh_id}", json=body, headers=self.headers
        )
        assert response.status_code == 200, response.text
        self.model.refreshes[(org, refresh_id)] = (
            INSTANTS[finished_at][0] if status == "completed" else None
        )

    @rule(license_name=st.sampled_from(sorted(LICENSES)), delta=st.integers(-(10**6), 10**6))
    def adjust_credits(self, license_name: str, delta: int) -> None:
        target = self.model.credits_used(license_name) + delta
        with self.database.session(write=True) as session:
            lic = licenses.get(session, self.license_ids[license_name])
            licenses.adjust_credits_used(session, lic, target, "model", "property test")
        self.model.adjustments[license_name] += delta

    # --- the model's expectation ---------------------------------------------------

    def _org(self, event: dict[str, Any]) -> str:
        ref = event["organization"]
        return self.org_of[ref] if isinstance(ref, int) else self.org_of_slug[ref]

    def _refer(self, data: st.DataObject, event: dict[str, Any], org: str) -> dict[str, Any]:
        """The organization by slug or by id: the same event either way."""
        event["organization"] = data.draw(st.sampled_from([self.slugs[org], self.org_ids[org]]))
        return event

    def _send(self, events: list[dict[str, Any]]) -> None:
        response = self.client.post("/api/v1/usage", json={"events": events}, headers=self.headers)
        if any(event.get("input_tokens", 0) < 0 for event in events):
            assert response.status_code == 422, response.text
            return
        statuses: list[str] = []
        new: dict[tuple[str, str], tuple[dict[str, Any], Stored]] = {}
        conflict = False
        for event in events:
            org = self._org(event)
            key = (org, event["id"])
            text = canonical(event)
            known = self.model.events.get(key) or (new[key][1] if key in new else None)
            if known is not None:
                conflict = conflict or known.canonical != text
                statuses.append("duplicate")
                continue
            month, in_force = INSTANTS[event["timestamp"]]
            license_name = in_force.get(org)
            cost = expected_cost(event)
            split = event.get("cache_creation") or {}
            writes = event.get(
                "cache_creation_input_tokens",
                sum(split.values()),
            )
            new[key] = (
                event,
                Stored(
                    canonical=text,
                    month=month,
                    license=license_name,
                    tokens={
                        "input_tokens": event["input_tokens"],
                        "output_tokens": event["output_tokens"],
                        "cache_creation_tokens": writes,
                        "cache_read_tokens": event["cache_read_input_tokens"],
                    },
                    api_calls=event["api_calls"],
                    cost_nano=cost,
                    credits_micro=(
                        credits_micro(cost, self.cost_per_credit[license_name])
                        if cost is not None and license_name is not None
                        else None
                    ),
                ),
            )
            statuses.append("created")
        if conflict:
            assert response.status_code == 409, response.text
            return
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert [r["status"] for r in results] == statuses
        for key, (_event, stored) in new.items():
            self.model.events[key] = stored
        for event, result in zip(events, results, strict=True):
            stored = self.model.events[(self._org(event), event["id"])]
            assert _units(result["cost_usd"], 9) == stored.cost_nano, (event, result)
            assert _units(result["credits"], 6) == stored.credits_micro, (event, result)
            want = (
                "unpriced"
                if stored.cost_nano is None
                else ("provided" if "cost_usd" in event else "priced")
            )
            if result["status"] == "created":
                assert result["pricing"] == want
        if new:
            self.model.batches.append(events)

    # --- the database agrees -------------------------------------------------------

    @invariant()
    @precondition(lambda self: bool(self.license_ids))
    def database_equals_model(self) -> None:
        with self.database.session(write=False) as session:
            monthly = {
                (self.org_of[row.organization_id], row.year_month): {
                    name: getattr(row, name) for name in MONTHLY_FIELDS
                }
                for row in session.scalars(select(TokenUsageMonthly))
                if any(getattr(row, name) for name in MONTHLY_FIELDS)
            }
            assert monthly == self.model.monthly()

            names = {lid: name for name, lid in self.license_ids.items()}
            used = {
                names[lid]: value
                for lid, value in session.execute(select(License.id, License.credits_used_micro))
            }
            assert used == {name: self.model.credits_used(name) for name in LICENSES}

            rows = session.execute(
                select(
                    UsageEvent.organization_id,
                    UsageEvent.external_id,
                    UsageEvent.cost_nano,
                    UsageEvent.credits_micro,
                    UsageEvent.license_id,
                )
            ).all()
            assert len(rows) == len(self.model.events)
            for org_id, external_id, cost, credits, license_id in rows:
                stored = self.model.events[(self.org_of[org_id], external_id)]
                assert (cost, credits) == (stored.cost_nano, stored.credits_micro)
                assert license_id == (self.license_ids[stored.license] if stored.license else None)
                if cost is not None and license_id is not None:
                    per_credit = self.cost_per_credit[names[license_id]]
                    assert credits == credits_micro(cost, per_credit)


def _units(text: str | None, places: int) -> int | None:
    return None if text is None else int(Decimal(text).scaleb(places))


@pytest.fixture
def fresh_url(
    request: pytest.FixtureRequest, database_url: str, tmp_path: Path
) -> Iterator[Callable[[], str]]:
    """A new empty migrated database of the test's backend, each time it is called."""
    if database_url.startswith("sqlite"):
        template: Path = request.getfixturevalue("sqlite_template")
        counter = itertools.count()

        def sqlite_copy() -> str:
            path = tmp_path / f"example-{next(counter)}.db"
            shutil.copy(template, path)
            return f"sqlite:///{path}"

        yield sqlite_copy
    else:

        def emptied() -> str:
            _empty_postgres(database_url)
            return database_url

        yield emptied


def test_ledger_matches_a_plain_model(fresh_url: Callable[[], str]) -> None:
    machine = type("Ledger", (LedgerMachine,), {"fresh_url": staticmethod(fresh_url)})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=30,
            stateful_step_count=10,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        ),
    )
