"""The tenant portal (/portal/{token}): an organization's own figures, read-only.

Opened by a signed link (portal/links.py), framed by the origins the operator allows
(middleware.py), and working without any cookie, so inside another site's iframe too:
the language comes from Accept-Language, the theme from prefers-color-scheme. It shows
what the token-usage tab shows, from the same services (usage/tenant.py, usage/queries.py,
budgets), and nothing of the admin UI: no navigation, no names of admins, keys, webhooks
or audit entries, no link out of the portal. A forged, expired or revoked token gets a
401 page that names no organization.

Also the admin UI's control for links: create one, revoke them all.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from tokenledger.budgets.service import figures_for
from tokenledger.config import Settings
from tokenledger.deps import AppSettings, Now, RowId, Session, get_database
from tokenledger.errors import DomainError
from tokenledger.licenses.models import License
from tokenledger.money import percent
from tokenledger.organizations import service as organizations
from tokenledger.organizations.models import Organization
from tokenledger.periods import month_bounds, month_of
from tokenledger.portal import links
from tokenledger.usage import export, tenant
from tokenledger.usage.export import ClosingStreamingResponse
from tokenledger.web import forms, i18n
from tokenledger.web.charts import bar_chart, meters
from tokenledger.web.common import AdminPage, DbSession, Form, PageRoute, redirect, templates
from tokenledger.web.i18n import N_
from tokenledger.web.periods import bar_periods
from tokenledger.web.rendering import STATE_LABELS, render

router = APIRouter(include_in_schema=False)
admin_router = APIRouter(route_class=PageRoute, include_in_schema=False)


def _language(request: Request) -> str:
    # No cookie: a third-party iframe has none. The browser's own preference decides.
    return i18n.negotiate(None, request.headers.get("accept-language"))


def _render(
    request: Request, settings: Settings, template: str, status: int, **context: Any
) -> HTMLResponse:
    language = _language(request)
    translations = i18n.translations(language)

    def _(message: str, **params: Any) -> str:
        text: str = translations.gettext(message)
        return text % params if params else text

    def _n(singular: str, plural: str, count: int, **params: Any) -> str:
        text: str = translations.ngettext(singular, plural, count)
        return text % {"count": count, **params}

    values = {
        "_": _,
        "_n": _n,
        "fmt": i18n.formatter(language, settings.timezone),
        "lang": language,
        "tz": settings.billing_timezone,
        "decimal": Decimal,
        "parse_iso": datetime.fromisoformat,
        "STATE_LABELS": STATE_LABELS,
        **context,
    }
    response = templates.TemplateResponse(request, template, values, status_code=status)
    response.headers["content-language"] = language
    return response


def _refused(request: Request, settings: Settings) -> HTMLResponse:
    # The same page for every bad token: it says nothing of whom a token was for.
    return _render(request, settings, "portal/refused.html", 401)


def _month(request: Request) -> str | None:
    month = request.query_params.get("month")
    if month is None:
        return None
    try:
        return tenant.check_month(month)
    except DomainError:
        return ""


@router.get("/portal/{token}", response_class=HTMLResponse)
def portal_page(
    token: str, request: Request, session: Session, settings: AppSettings, now: Now
) -> Response:
    org = links.organization_of(session, token, settings, now)
    if org is None:
        return _refused(request, settings)
    month = _month(request)
    if month == "":
        return _render(request, settings, "portal/refused.html", 422, invalid_month=True)
    return _render(
        request,
        settings,
        "portal/page.html",
        200,
        **_portal_context(session, org, settings, now, month, token, request),
    )


def _portal_context(
    session: Session,
    org: Organization,
    settings: Settings,
    now: datetime,
    month: str | None,
    token: str,
    request: Request,
) -> dict[str, Any]:
    tz = settings.timezone
    fmt = i18n.formatter(_language(request), tz)
    show_usd = settings.tenant_show_usd
    state = tenant.summary(session, org, settings, now)
    lic = session.get(License, state["license_id"]) if state["license_id"] else None
    fig = figures_for(session, [lic], tz, now)[lic.id] if lic else None
    bars = [m for m in meters(fig) if show_usd or m.kind == "credits"]
    this_month = month_of(now, tz)
    monthly = tenant.monthly(session, org, settings)
    months = sorted({row["year_month"] for row in monthly} | {this_month}, reverse=True)
    selected = month or this_month
    if selected not in months:
        months = sorted({*months, selected}, reverse=True)
    models = tenant.models(session, org, settings, selected)["models"]
    daily = tenant.daily(session, org, settings, selected)["days"]
    month_row = next((row for row in monthly if row["year_month"] == selected), None)
    month_cost = Decimal(month_row["cost_usd"]) if month_row and show_usd else Decimal(0)
    model_rows = [
        (
            model,
            percent(int(Decimal(model["cost_usd"]) * 10**9), int(month_cost * 10**9))
            if show_usd and month_cost
            else None,
        )
        for model in models
    ]
    chart = (
        bar_chart(
            [(fmt.day_short(d["day"]), Decimal(d["cost_usd"]), fmt.day(d["day"])) for d in daily],
            label_every=5,
        )
        if show_usd
        else None
    )
    return {
        "org": org,
        "state": state,
        "meters": bars,
        "period": bar_periods(fmt, now, lic),
        "show_usd": show_usd,
        "monthly": monthly,
        "totals": _totals(monthly, show_usd),
        "months": months,
        "selected": selected,
        "month_row": month_row,
        "month_cost": month_cost,
        "models": model_rows,
        "models_cost": sum((Decimal(m["cost_usd"]) for m in models), Decimal(0))
        if show_usd
        else None,
        "daily": daily,
        "chart": chart,
        "base": f"/portal/{token}",
    }


def _totals(rows: list[dict[str, Any]], show_usd: bool) -> dict[str, Any]:
    keys = (
        "input_tokens",
        "output_tokens",
        "cache_creation_tokens",
        "cache_read_tokens",
        "api_calls",
        "refresh_count",
        "unpriced_events",
    )
    totals: dict[str, Any] = {key: sum(row[key] or 0 for row in rows) for key in keys}
    totals["cost"] = (
        sum((Decimal(row["cost_usd"]) for row in rows), Decimal(0)) if show_usd else None
    )
    return totals


@router.get("/portal/{token}/events.csv", response_model=None)
def portal_csv(
    token: str, request: Request, session: Session, settings: AppSettings, now: Now
) -> Response:
    """The events of one billing month (?month=YYYY-MM, default this one) as CSV."""
    org = links.organization_of(session, token, settings, now)
    if org is None:
        return _refused(request, settings)
    month = _month(request)
    if month == "":
        return _render(request, settings, "portal/refused.html", 422, invalid_month=True)
    selected = month or month_of(now, settings.timezone)
    start, end = month_bounds(selected, settings.timezone)
    return ClosingStreamingResponse(
        export.csv_chunks(
            get_database(request), org.id, start, end, columns=tenant.csv_columns(settings)
        ),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{org.slug}-events-{selected}.csv"'},
    )


# The admin UI's control: on the organization's overview, for admins --------------------

PORTAL_REVOKED = N_("Every portal link of %(name)s is revoked.")


@admin_router.post("/organizations/{org_id}/portal-links")
def portal_link_create(
    org_id: RowId, request: Request, page: AdminPage, session: DbSession, form: Form
) -> Response:
    org = organizations.get(session, org_id)
    hours = forms.whole_number(form, "hours")
    assert page.principal is not None
    if isinstance(hours, str):
        raise DomainError(422, "invalid_lifetime", N_("The address holds an invalid value."))
    try:
        link = links.create_link(session, org, page.principal, page.settings, page.now, hours)
    except DomainError as exc:
        raise DomainError(422, exc.code, N_("The address holds an invalid value.")) from exc
    return render(
        page,
        "portal/created.html",
        201,
        org=org,
        url=links.portal_url(str(request.base_url), link.token),
        expires_at=link.expires_at,
    )


@admin_router.post("/organizations/{org_id}/portal-links/revoke")
def portal_links_revoke(org_id: RowId, page: AdminPage, session: DbSession) -> Response:
    org = organizations.get(session, org_id)
    assert page.principal is not None
    links.revoke_all(session, org, page.principal, page.now)
    return redirect(
        f"/organizations/{org.id}", flash=("success", PORTAL_REVOKED, {"name": org.name})
    )
