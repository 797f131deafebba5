"""The "Provider bill" page: the providers' own reports against the ledger, per UTC day and
model, the worst days first; provider accounts and their organizations; recent syncs.

The figures are the comparison API's (provider_reports.schemas.comparison_body): one dataset,
two renderings.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response
from sqlalchemy import select

from tokenledger.errors import DomainError
from tokenledger.money import nano_to_usd
from tokenledger.organizations.models import Organization
from tokenledger.provider_reports import service
from tokenledger.provider_reports.models import PROVIDERS, TOKEN_KINDS
from tokenledger.provider_reports.schemas import comparison_body
from tokenledger.schemas import parse_day
from tokenledger.web import forms
from tokenledger.web.charts import SLOT, _nice_ceiling
from tokenledger.web.common import AdminPage, DbSession, Form, PageRoute, ViewerPage, redirect
from tokenledger.web.i18n import N_
from tokenledger.web.rendering import render

router = APIRouter(route_class=PageRoute, include_in_schema=False)

PROVIDER_LABELS = {"anthropic": "Anthropic", "openai": "OpenAI"}
KIND_LABELS = {
    "uncached_input_tokens": N_("Uncached input"),
    "cache_write_5m_tokens": N_("Cache writes 5 min"),
    "cache_write_1h_tokens": N_("Cache writes 1 h"),
    "cache_read_tokens": N_("Cache reads"),
    "output_tokens": N_("Output"),
    "web_search_requests": N_("Web searches"),
}
ACCOUNT_LABELS = {"api_key": N_("API key"), "workspace": N_("Workspace"), "project": N_("Project")}
SYNC_LABELS = {"running": N_("Running"), "succeeded": N_("Succeeded"), "failed": N_("Failed")}
DEFAULT_DAYS = 30
assert set(KIND_LABELS) == set(TOKEN_KINDS)


@dataclass(frozen=True, slots=True)
class PairBar:
    x: float
    provider_y: float
    provider_height: float
    ledger_y: float
    ledger_height: float
    width: float
    label: str
    title: str
    provider: Decimal
    ledger: Decimal


@dataclass(frozen=True, slots=True)
class PairChart:
    """Two bars a day (the provider's cost, the ledger's) in a plot 100 high."""

    width: int
    bars: list[PairBar]
    grid: list[Decimal]
    places: int

    @property
    def grid_lines(self) -> list[int]:
        return [0, 25, 50, 75, 100]


def pair_chart(points: list[tuple[str, Decimal, Decimal, str]], label_every: int) -> PairChart:
    """Bars for (label, provider USD, ledger USD, title) points, oldest first."""
    top = _nice_ceiling(max((max(p, q) for _, p, q, _ in points), default=Decimal(0)))
    bars = []
    for index, (label, theirs, ours, title) in enumerate(points):
        heights = [
            round(float(value / top) * 100, 3) if value > 0 else 0.0 for value in (theirs, ours)
        ]
        shown = index % label_every == 0 or index == len(points) - 1
        bars.append(
            PairBar(
                x=index * SLOT + 1.0,
                provider_y=round(100 - heights[0], 3),
                provider_height=heights[0],
                ledger_y=round(100 - heights[1], 3),
                ledger_height=heights[1],
                width=(SLOT - 2.0) / 2,
                label=label if shown else "",
                title=title,
                provider=theirs,
                ledger=ours,
            )
        )
    grid = [top * step / 4 for step in (4, 3, 2, 1, 0)]
    places = 0 if all(value == value.to_integral_value() for value in grid) else 2
    return PairChart(width=max(1, len(points)) * SLOT, bars=bars, grid=grid, places=places)


def _day_or_default(text: str, default: date) -> date:
    if not text:
        return default
    try:
        return parse_day(text)
    except ValueError as exc:
        raise DomainError(422, "invalid_date", N_("The address holds an invalid value.")) from exc


def _worst(value: str | None) -> Decimal:
    return abs(Decimal(value)) if value is not None else Decimal(0)


@router.get("/admin/provider-bill")
def provider_bill(
    page: ViewerPage,
    session: DbSession,
    provider: Annotated[str, Query(pattern="^(anthropic|openai)$")] = "anthropic",
    from_: Annotated[str, Query(alias="from", max_length=10)] = "",
    to: Annotated[str, Query(max_length=10)] = "",
    organization_id: Annotated[str, Query(max_length=12, pattern=r"^\d*$")] = "",
) -> Response:
    last = _day_or_default(to, page.now.date())
    first = _day_or_default(from_, last - timedelta(days=DEFAULT_DAYS - 1))
    org_id = int(organization_id) if organization_id else None
    body = comparison_body(service.compare(session, provider, first, last, org_id))
    points = [
        (
            page.fmt.day_short(day["day"]),
            Decimal(day["provider_cost_usd"]),
            Decimal(day["ledger_cost_usd"]),
            page.fmt.day(day["day"]),
        )
        for day in body["days"]
    ]
    chart = pair_chart(points, label_every=max(1, len(points) // 10))
    worst_days = sorted(body["days"], key=lambda day: (-_worst(day["drift_usd"]), day["day"]))
    rows = sorted(
        body["rows"], key=lambda row: (-_worst(row["drift_usd"]), row["day"], row["model"])
    )
    orgs = list(
        session.execute(select(Organization.id, Organization.name).order_by(Organization.name))
    )
    accounts = service.list_accounts(session, provider)
    return render(
        page,
        "provider_bill.html",
        provider=provider,
        providers=PROVIDERS,
        provider_labels=PROVIDER_LABELS,
        body=body,
        first=first,
        last=last,
        organization_id=org_id,
        chart=chart,
        worst_days=worst_days,
        rows=rows,
        kinds=TOKEN_KINDS,
        kind_labels=KIND_LABELS,
        account_labels=ACCOUNT_LABELS,
        sync_labels=SYNC_LABELS,
        organizations=orgs,
        org_names=dict(orgs),
        accounts=accounts,
        syncs=service.recent_syncs(session, provider, 10),
        percent_of=_percent_of,
        nano_to_usd=nano_to_usd,
    )


def _percent_of(ratio: str | None) -> Decimal | None:
    """A coverage ratio ("0.7692") as a percentage for display."""
    return None if ratio is None else Decimal(ratio) * 100


@router.post("/admin/provider-bill/accounts")
def map_account(page: AdminPage, session: DbSession, form: Form) -> Response:
    provider = forms.text(form, "provider")
    kind = forms.text(form, "kind")
    external_id = forms.text(form, "external_id")
    chosen = forms.text(form, "organization_id")
    if provider not in PROVIDERS or not external_id or (not chosen.isdigit() and chosen):
        raise DomainError(422, "invalid_mapping", N_("The address holds an invalid value."))
    assert page.principal is not None
    account = service.map_account(
        session, provider, kind, external_id, int(chosen) if chosen else None, page.principal
    )
    return redirect(
        f"/admin/provider-bill?provider={provider}",
        flash=("success", N_("%(account)s mapped."), {"account": account.external_id}),
    )
