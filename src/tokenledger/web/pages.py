"""Pages of the admin UI: dashboard, organizations and their tabs, licenses.

Every figure comes from the services the API routes call (usage.queries, budgets,
licenses, alerts); these routes only parse, call and render.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.datastructures import FormData

from tokenledger.alerts import service as alerts
from tokenledger.auth import service as auth_service
from tokenledger.budgets import changes
from tokenledger.budgets.changes import budget_fields
from tokenledger.budgets.service import budget_states, figures_for
from tokenledger.deps import RowId, get_hot
from tokenledger.errors import DomainError
from tokenledger.gateway.admin import interrupted_calls
from tokenledger.licenses import service as licenses
from tokenledger.licenses.models import BUDGET_PERIODS, ENFORCEMENTS, LICENSE_STATUSES, License
from tokenledger.licenses.schemas import LicenseCreate, LicenseUpdate
from tokenledger.money import credits_value_nano, format_usd, nano_to_usd, percent
from tokenledger.organizations import service as organizations
from tokenledger.organizations.models import Organization
from tokenledger.organizations.schemas import OrganizationCreate, OrganizationUpdate
from tokenledger.periods import month_bounds, month_of
from tokenledger.schemas import MONTH_PATTERN
from tokenledger.usage import queries
from tokenledger.web import forms
from tokenledger.web.charts import bar_chart, meters
from tokenledger.web.common import (
    AdminPage,
    DbSession,
    Form,
    Page,
    PageRoute,
    ViewerPage,
    redirect,
)
from tokenledger.web.i18n import N_
from tokenledger.web.periods import bar_periods
from tokenledger.web.rendering import render

router = APIRouter(route_class=PageRoute, include_in_schema=False)

Month = Annotated[str | None, Query(pattern=MONTH_PATTERN)]

SORTS = {
    "name": N_("Name"),
    "used": N_("% used"),
    "month": N_("Cost this month"),
    "total": N_("Total cost"),
}
FILTERS = {
    "": N_("All organizations"),
    "near": N_("Near limit (warning)"),
    "exhausted": N_("Exhausted"),
    "runs_out": N_("Projected to run out this period"),
    "no_license": N_("No license"),
}
MIN_USED = (0, 25, 50, 80, 100)


# Dashboard ---------------------------------------------------------------------------


@router.get("/")
def dashboard(page: ViewerPage, session: DbSession) -> Response:
    tz = page.settings.timezone
    figures = queries.dashboard_figures(session, tz, page.now)
    months = figures.months[-12:]
    chart = bar_chart(
        [(page.fmt.month_short(ym), nano_to_usd(cost), page.fmt.month(ym)) for ym, cost in months]
    )
    recent, _total = alerts.list_alerts(session, None, None, 8, 0)
    deliveries = alerts.deliveries_of(session, [alert.id for alert in recent])
    names = _org_names(
        session, {alert.organization_id for alert in recent if alert.organization_id is not None}
    )
    return render(
        page,
        "dashboard.html",
        figures=figures,
        months=list(reversed(figures.months)),
        chart=chart,
        recent_alerts=recent,
        deliveries=deliveries,
        org_names=names,
        format_usd=format_usd,
        interrupted_calls=interrupted_calls(session, page.now),
    )


def _org_names(session: DbSession, ids: set[int]) -> dict[int, Organization]:
    return {org_id: organizations.get(session, org_id) for org_id in ids}


# Organizations -------------------------------------------------------------------------


@router.get("/organizations")
def organization_list(
    page: ViewerPage,
    session: DbSession,
    q: Annotated[str, Query(max_length=200)] = "",
    show: Annotated[str, Query(max_length=20)] = "",
    min_used: Annotated[int, Query(ge=0, le=100)] = 0,
    sort: Annotated[str, Query(max_length=20)] = "name",
    archived: Annotated[bool, Query()] = False,
) -> Response:
    rows = queries.organization_rows(
        session, page.settings.timezone, page.now, get_hot(page.request).all_licenses()
    )
    if q.strip():
        matches, _count = organizations.search(session, q.strip(), 500, 0)
        wanted = {org.id for org in matches}
        rows = [row for row in rows if row.org.id in wanted]
    if not archived:
        rows = [row for row in rows if row.org.archived_at is None]
    if show == "near":
        rows = [row for row in rows if row.state == "warning"]
    elif show == "exhausted":
        rows = [row for row in rows if row.state == "exhausted"]
    elif show == "runs_out":
        rows = [row for row in rows if row.runs_out_this_period]
    elif show == "no_license":
        rows = [row for row in rows if row.state == "no_license"]
    if min_used:
        rows = [row for row in rows if (row.percent_used or 0) >= min_used]
    if sort == "used":
        rows.sort(key=lambda row: -(row.percent_used or -1))
    elif sort == "month":
        rows.sort(key=lambda row: -row.cost_this_month_nano)
    elif sort == "total":
        rows.sort(key=lambda row: -row.totals.get("cost", 0))
    total_nano = sum(row.totals.get("cost", 0) for row in rows)
    month_nano = sum(row.cost_this_month_nano for row in rows)
    filtered = bool(q.strip() or show or min_used)
    return render(
        page,
        "organizations.html",
        rows=[(row, meters(row.figures)) for row in rows],
        total_nano=total_nano,
        month_nano=month_nano,
        q=q,
        show=show,
        min_used=min_used,
        sort=sort,
        archived=archived,
        filtered=filtered,
        SORTS=SORTS,
        FILTERS=FILTERS,
        MIN_USED=MIN_USED,
        year_month=month_of(page.now, page.settings.timezone),
        format_usd=format_usd,
        parse_iso=datetime.fromisoformat,
    )


@router.get("/organizations/new")
def organization_new(page: AdminPage) -> Response:
    return render(page, "organization_form.html", org=None, values={}, errors={})


@router.post("/organizations/new")
def organization_create(page: AdminPage, session: DbSession, form: Form) -> Response:
    values = {"name": forms.text(form, "name"), "slug": forms.optional(form, "slug")}
    try:
        data = OrganizationCreate.model_validate(values)
    except ValidationError as exc:
        return render(
            page,
            "organization_form.html",
            422,
            org=None,
            values=values,
            errors=forms.field_errors(exc),
        )
    assert page.principal is not None
    try:
        org = organizations.create(session, data, actor=page.principal)
    except DomainError as exc:  # refused before anything was written
        errors = forms.error("slug", SLUG_TAKEN) if exc.code == "slug_taken" else {}
        return render(
            page, "organization_form.html", exc.status, org=None, values=values, errors=errors
        )
    return redirect(
        f"/organizations/{org.id}",
        flash=("success", N_("Organization %(name)s created."), {"name": org.name}),
    )


SLUG_TAKEN = N_("Another organization has this slug.")


@router.get("/organizations/{org_id}/edit")
def organization_edit(org_id: RowId, page: AdminPage, session: DbSession) -> Response:
    org = organizations.get(session, org_id)
    values = {"name": org.name, "slug": org.slug, "archived": org.archived_at is not None}
    return render(page, "organization_form.html", org=org, values=values, errors={})


@router.post("/organizations/{org_id}/edit")
def organization_update(org_id: RowId, page: AdminPage, session: DbSession, form: Form) -> Response:
    org = organizations.get(session, org_id)
    values: dict[str, Any] = {
        "name": forms.text(form, "name"),
        "slug": forms.text(form, "slug"),
        "archived": form.get("archived") == "on",
    }
    try:
        data = OrganizationUpdate.model_validate(values)
    except ValidationError as exc:
        return render(
            page,
            "organization_form.html",
            422,
            org=org,
            values=values,
            errors=forms.field_errors(exc),
        )
    assert page.principal is not None
    try:
        organizations.update(session, org, data, actor=page.principal, now=page.now)
    except DomainError as exc:  # refused before anything was changed
        errors = forms.error("slug", SLUG_TAKEN) if exc.code == "slug_taken" else {}
        return render(
            page, "organization_form.html", exc.status, org=org, values=values, errors=errors
        )
    return redirect(
        f"/organizations/{org.id}",
        flash=("success", N_("Organization %(name)s saved."), {"name": org.name}),
    )


def _governing(session: DbSession, page: Page, org: Organization) -> dict[str, Any]:
    """The budget state, license, figures and forecast that govern an organization now."""
    tz = page.settings.timezone
    state = budget_states(session, [org], tz, page.now, forecast=True)[0]
    lic = licenses.get(session, state["license_id"]) if state["license_id"] else None
    fig = figures_for(session, [lic], tz, page.now)[lic.id] if lic else None
    return {"state": state, "license": lic, "figures": fig, "meters": meters(fig)}


def _org_context(session: DbSession, page: Page, org_id: int, tab: str) -> dict[str, Any]:
    org = organizations.get(session, org_id)
    interrupted = interrupted_calls(session, page.now, org_id)
    return {
        "org": org,
        "tab": tab,
        "interrupted_calls": interrupted,
        **_governing(session, page, org),
    }


@router.get("/organizations/{org_id}")
def organization_overview(org_id: RowId, page: ViewerPage, session: DbSession) -> Response:
    context = _org_context(session, page, org_id, "overview")
    tz = page.settings.timezone
    monthly = queries.monthly(session, org_id, tz)
    this_month = month_of(page.now, tz)
    current = next((row for row in monthly if row["year_month"] == this_month), None)
    totals = _monthly_totals(monthly)
    return render(
        page,
        "organization.html",
        **context,
        current=current,
        totals=totals,
        months_count=len(monthly),
        period=_period(page, context["license"]),
        parse_iso=datetime.fromisoformat,
    )


@router.get("/organizations/{org_id}/licenses")
def organization_licenses(org_id: RowId, page: ViewerPage, session: DbSession) -> Response:
    context = _org_context(session, page, org_id, "licenses")
    rows = licenses.for_organization(session, org_id)
    return render(
        page,
        "organization.html",
        **context,
        licenses=rows,
        contract_value=contract_value,
    )


def contract_value(lic: License) -> int:
    """The contract value a license implies: credits sold times the price per credit (nano)."""
    return credits_value_nano(lic.credits_total_micro, lic.cost_per_credit_nano)


def _monthly_totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = (
        "input_tokens",
        "output_tokens",
        "cache_creation_tokens",
        "cache_read_tokens",
        "api_calls",
        "refresh_count",
        "failed_refreshes",
        "unpriced_events",
    )
    totals: dict[str, Any] = {key: sum(row[key] or 0 for row in rows) for key in keys}
    totals["cost_nano"] = sum(row["cost_nano"] for row in rows)
    return totals


def _period(page: Page, lic: License | None) -> dict[str, Any] | None:
    """The period each bar counts now (credits: the license term; USD: its budget period)."""
    return bar_periods(page.fmt, page.now, lic)


@router.get("/organizations/{org_id}/usage")
def organization_usage(
    org_id: RowId, page: ViewerPage, session: DbSession, month: Month = None
) -> Response:
    context = _org_context(session, page, org_id, "usage")
    tz = page.settings.timezone
    this_month = month_of(page.now, tz)
    monthly = queries.monthly(session, org_id, tz)
    months = sorted({row["year_month"] for row in monthly} | {this_month}, reverse=True)
    selected = month or this_month
    if selected not in months:
        months = sorted({*months, selected}, reverse=True)
    models = queries.model_sums(session, org_id, selected)
    month_row = next((row for row in monthly if row["year_month"] == selected), None)
    month_nano = month_row["cost_nano"] if month_row else 0
    # Shares of the models' own total (the month's daily rollups), in integers.
    models_nano = sum(model["cost_nano"] for model in models)
    model_rows = [(model, percent(model["cost_nano"], models_nano)) for model in models]
    daily = queries.daily_for_days(session, org_id, queries.days_of_month(selected))
    chart = bar_chart(
        [
            (
                page.fmt.day_short(day["day"]),
                nano_to_usd(day["cost_nano"]),
                page.fmt.day(day["day"]),
            )
            for day in daily
        ],
        label_every=5,
    )
    start, end = month_bounds(selected, tz)
    return render(
        page,
        "organization.html",
        **context,
        monthly=monthly,
        totals=_monthly_totals(monthly),
        months=months,
        selected=selected,
        month_row=month_row,
        month_nano=month_nano,
        models=model_rows,
        models_nano=models_nano,
        format_usd=format_usd,
        daily=daily,
        daily_nano=sum(day["cost_nano"] for day in daily),
        chart=chart,
        csv_from=start.isoformat(),
        csv_to=end.isoformat(),
        period=_period(page, context["license"]),
        parse_iso=datetime.fromisoformat,
    )


@router.get("/organizations/{org_id}/keys")
def organization_keys(org_id: RowId, page: ViewerPage, session: DbSession) -> Response:
    context = _org_context(session, page, org_id, "keys")
    keys = auth_service.list_api_keys(session, org_id)
    return render(page, "organization.html", **context, keys=keys, new_key=None, errors={})


@router.post("/organizations/{org_id}/keys")
def organization_key_create(
    org_id: RowId, page: AdminPage, session: DbSession, form: Form
) -> Response:
    context = _org_context(session, page, org_id, "keys")
    org: Organization = context["org"]
    assert page.principal is not None
    try:
        _key, secret = auth_service.create_api_key(
            session, forms.text(form, "name"), org.slug, actor=page.principal
        )
    except DomainError as exc:  # refused before anything was written
        keys = auth_service.list_api_keys(session, org_id)
        return render(
            page,
            "organization.html",
            exc.status,
            **context,
            keys=keys,
            new_key=None,
            errors=forms.key_error(exc),
        )
    keys = auth_service.list_api_keys(session, org_id)
    # Shown in this answer only: the key is not stored, only its hash.
    return render(page, "organization.html", 201, **context, keys=keys, new_key=secret, errors={})


@router.get("/organizations/{org_id}/alerts")
def organization_alerts(org_id: RowId, page: ViewerPage, session: DbSession) -> Response:
    context = _org_context(session, page, org_id, "alerts")
    rows, total = alerts.list_alerts(session, org_id, None, 100, 0)
    deliveries = alerts.deliveries_of(session, [alert.id for alert in rows])
    return render(
        page,
        "organization.html",
        **context,
        alerts=rows,
        alerts_total=total,
        deliveries=deliveries,
    )


# Licenses ----------------------------------------------------------------------------


def _license_values(lic: License | None, page: Page) -> dict[str, Any]:
    tz = page.settings.timezone
    if lic is None:
        return {
            "status": "active",
            "valid_from": page.now.astimezone(tz).date().isoformat(),
            "valid_until": "",
            "credits_total": "",
            "credits_unlimited": False,
            "cost_per_credit": "0.01",
            "token_budget_usd": "",
            "budget_unlimited": False,
            "budget_period": "monthly",
            "budget_warning_percent": "80",
            "enforcement": "soft",
            "credits_used": "",
        }
    read = licenses.to_read(lic)
    return {
        "status": read.status,
        "valid_from": forms.day_of(lic.valid_from, tz),
        "valid_until": forms.day_of(lic.valid_until, tz, before=True),
        "credits_total": _plain(read.credits_total) if lic.credits_total_micro else "",
        "credits_unlimited": lic.credits_total_micro == 0,
        "cost_per_credit": _plain(read.cost_per_credit),
        "token_budget_usd": _plain(read.token_budget_usd) if lic.token_budget_nano else "",
        "budget_unlimited": not lic.token_budget_nano,
        "budget_period": read.budget_period,
        "budget_warning_percent": str(read.budget_warning_percent),
        "enforcement": read.enforcement,
        "credits_used": "",
    }


def _plain(value: Decimal | None) -> str:
    """Decimal text without trailing zeros, as a number field takes it."""
    if value is None:
        return ""
    text = f"{value.normalize():f}"
    return text


def _form_values(form: FormData) -> dict[str, Any]:
    names = (
        "status",
        "valid_from",
        "valid_until",
        "credits_total",
        "cost_per_credit",
        "token_budget_usd",
        "budget_period",
        "budget_warning_percent",
        "enforcement",
        "credits_used",
    )
    values: dict[str, Any] = {name: forms.text(form, name) for name in names}
    values["credits_unlimited"] = form.get("credits_unlimited") == "on"
    values["budget_unlimited"] = form.get("budget_unlimited") == "on"
    return values


def _limits(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, tuple[str, dict[str, Any]]]]:
    """credits_total and token_budget_usd from the form: unlimited is its own choice, not 0.

    The ledger stores "no credit limit" as 0 credits and "no USD budget" as null, and
    treats a 0 budget as no limit too: so 0 is refused here, and unlimited says it.
    """
    limits: dict[str, Any] = {}
    errors: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, unlimited, none_value in (
        ("credits_total", "credits_unlimited", "0"),
        ("token_budget_usd", "budget_unlimited", None),
    ):
        if values[unlimited]:
            limits[name] = none_value
            continue
        raw = values[name]
        if not raw:
            errors[name] = (forms.POSITIVE_OR_UNLIMITED, {})
            continue
        try:
            if Decimal(raw) == 0:
                errors[name] = (forms.POSITIVE_OR_UNLIMITED, {})
                continue
        except ArithmeticError:
            pass  # the schema names the error
        limits[name] = raw
    return limits, errors


def _license_form(
    page: Page,
    org: Organization,
    lic: License | None,
    values: dict[str, Any],
    errors: dict[str, Any],
    status_code: int = 200,
    message: str | None = None,
) -> Response:
    return render(
        page,
        "license_form.html",
        status_code,
        org=org,
        license=lic,
        values=values,
        errors=errors,
        message=message,
        statuses=LICENSE_STATUSES,
        periods=BUDGET_PERIODS,
        enforcements=ENFORCEMENTS,
        implied=_implied_value(values),
    )


def _implied_value(values: dict[str, Any]) -> Decimal | None:
    """Credits times price per credit, for the form's 'contract value' line."""
    try:
        credits = Decimal(values.get("credits_total") or "0")
        price = Decimal(values.get("cost_per_credit") or "0")
    except ArithmeticError:
        return None
    if values.get("credits_unlimited") or credits <= 0 or price <= 0:
        return None
    return credits * price


@router.get("/organizations/{org_id}/licenses/new")
def license_new(org_id: RowId, page: AdminPage, session: DbSession) -> Response:
    org = organizations.get(session, org_id)
    return _license_form(page, org, None, _license_values(None, page), {})


@router.post("/organizations/{org_id}/licenses/new")
def license_create(org_id: RowId, page: AdminPage, session: DbSession, form: Form) -> Response:
    org = organizations.get(session, org_id)
    tz = page.settings.timezone
    values = _form_values(form)
    limits, errors = _limits(values)
    data = {
        "organization_id": org.id,
        "status": values["status"] or "active",
        "valid_from": forms.day_start(form, "valid_from", tz),
        "valid_until": forms.day_start(form, "valid_until", tz, after=True),
        "credits_total": limits.get("credits_total", "0"),
        "cost_per_credit": values["cost_per_credit"] or None,
        "token_budget_usd": limits.get("token_budget_usd"),
        "budget_period": values["budget_period"] or "monthly",
        "budget_warning_percent": forms.whole_number(form, "budget_warning_percent"),
        "enforcement": values["enforcement"] or "soft",
    }
    if data["budget_warning_percent"] is None:
        data["budget_warning_percent"] = 80
    try:
        parsed = LicenseCreate.model_validate(data)
    except ValidationError as exc:
        errors = {**forms.field_errors(exc), **errors}
    if errors:
        return _license_form(page, org, None, values, errors, 422)
    assert page.principal is not None
    try:
        licenses.create(session, parsed, page.now, actor=page.principal)
    except DomainError as exc:  # refused before anything was written
        return _license_form(page, org, None, values, {}, exc.status, _license_error(exc))
    return redirect(
        f"/organizations/{org.id}/licenses", flash=("success", N_("License created."), {})
    )


LICENSE_ERRORS = {
    "active_license_exists": N_(
        "This organization has an active license already: end or suspend it first."
    ),
    "organization_archived": N_("The organization is archived."),
    "invalid_validity": forms.VALIDITY_ERROR,
}


def _license_error(exc: DomainError) -> str:
    return LICENSE_ERRORS.get(exc.code, exc.message)


@router.get("/licenses/{license_id}/edit")
def license_edit(license_id: RowId, page: AdminPage, session: DbSession) -> Response:
    lic = licenses.get(session, license_id)
    org = organizations.get(session, lic.organization_id)
    return _license_form(page, org, lic, _license_values(lic, page), {})


@router.post("/licenses/{license_id}/edit")
def license_update(license_id: RowId, page: AdminPage, session: DbSession, form: Form) -> Response:
    lic = licenses.get(session, license_id, for_update=True)
    org = organizations.get(session, lic.organization_id)
    tz = page.settings.timezone
    values = _form_values(form)
    shown = _license_values(lic, page)
    limits, errors = _limits(values)
    terms: dict[str, Any] = {
        "status": values["status"] or None,
        "budget_period": values["budget_period"] or None,
        "enforcement": values["enforcement"] or None,
    }
    # Validity changes only when its field was changed (a day field cannot show the hour).
    if values["valid_from"] != shown["valid_from"]:
        terms["valid_from"] = forms.day_start(form, "valid_from", tz)
        if terms["valid_from"] is None:
            errors["valid_from"] = (N_("This field is required."), {})
    if values["valid_until"] != shown["valid_until"]:
        terms["valid_until"] = forms.day_start(form, "valid_until", tz, after=True)
    budget: dict[str, Any] = {
        **limits,
        "cost_per_credit": values["cost_per_credit"] or None,
        "budget_warning_percent": forms.whole_number(form, "budget_warning_percent"),
    }
    if values["credits_used"]:
        budget["credits_used"] = values["credits_used"]
    # Only what changed: an unchanged budget writes no audit entry and no adjustment.
    current = {
        "credits_total": "0" if shown["credits_unlimited"] else shown["credits_total"],
        "token_budget_usd": None if shown["budget_unlimited"] else shown["token_budget_usd"],
        "cost_per_credit": shown["cost_per_credit"],
        "budget_warning_percent": int(shown["budget_warning_percent"]),
    }
    changed = {
        key: value
        for key, value in budget.items()
        if key == "credits_used" or not _same(value, current.get(key))
    }
    try:
        update = LicenseUpdate.model_validate(terms)
    except ValidationError as exc:
        errors = {**forms.field_errors(exc), **errors}
    try:
        budget_update = budget_fields(changed)
    except ValidationError as exc:
        errors = {**forms.field_errors(exc), **errors}
    if errors:
        return _license_form(page, org, lic, values, errors, 422)
    assert page.principal is not None
    try:
        # PATCH /api/licenses/{id}, with PUT /api/token-usage/budget/{id}'s rules for the
        # budget fields: one service, checked whole before it changes anything.
        changes.update_license(
            session,
            lic,
            update,
            actor=page.principal,
            tz=tz,
            now=page.now,
            budget=budget_update if budget_update.model_fields_set else None,
        )
    except DomainError as exc:
        return _license_form(page, org, lic, values, {}, exc.status, _license_error(exc))
    return redirect(
        f"/organizations/{org.id}/licenses", flash=("success", N_("License saved."), {})
    )


def _same(given: Any, current: Any) -> bool:
    if given is None or current is None:
        return given is None and current is None
    try:
        return Decimal(str(given)) == Decimal(str(current))
    except ArithmeticError:
        return False
