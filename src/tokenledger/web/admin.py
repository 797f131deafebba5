"""Administration pages: audit log, webhooks, prices, admin users, ingest keys, patterns."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import ValidationError
from sqlalchemy import select

from tokenledger.alerts import service as alerts
from tokenledger.alerts import webhooks
from tokenledger.alerts.models import Webhook
from tokenledger.alerts.schemas import WebhookCreate
from tokenledger.audit import service as audit
from tokenledger.auth import service as auth_service
from tokenledger.auth.models import ROLES
from tokenledger.deps import RowId
from tokenledger.errors import DomainError
from tokenledger.organizations.models import Organization
from tokenledger.pricing import overrides
from tokenledger.pricing.schemas import OverrideSet
from tokenledger.usage import queries
from tokenledger.web import forms
from tokenledger.web.charts import Meter, bar_chart
from tokenledger.web.common import AdminPage, DbSession, Form, Page, PageRoute, ViewerPage, redirect
from tokenledger.web.i18n import N_
from tokenledger.web.rendering import render

router = APIRouter(route_class=PageRoute, include_in_schema=False)

ROLE_LABELS = {"admin": N_("Admin"), "viewer": N_("Viewer")}
PRICING_LABELS = {
    "priced": N_("Priced"),
    "unpriced": N_("Unpriced"),
    "provided": N_("Cost given by caller"),
    "partially_priced": N_("Partially priced"),
}
RATE_FIELDS = (
    ("input", N_("Input")),
    ("output", N_("Output")),
    ("cache_write_5m", N_("Cache write 5 min")),
    ("cache_write_1h", N_("Cache write 1 h")),
    ("cache_read", N_("Cache read")),
)


# Audit log ----------------------------------------------------------------------------


@router.get("/admin/audit")
def audit_log(
    page: ViewerPage,
    session: DbSession,
    entity: Annotated[str, Query(max_length=64)] = "",
    actor: Annotated[str, Query(max_length=320)] = "",
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> Response:
    limit = 50
    rows, total = audit.list_entries(
        session,
        entity_type=entity or None,
        entity_id=None,
        actor=actor or None,
        limit=limit,
        offset=offset,
    )
    return render(
        page,
        "audit.html",
        rows=[(row, _changes(row.before, row.after)) for row in rows],
        total=total,
        entity=entity,
        actor=actor,
        offset=offset,
        limit=limit,
        entity_types=audit.entity_types(session),
    )


def _changes(
    before: dict[str, Any] | None, after: dict[str, Any] | None
) -> list[tuple[str, Any, Any]]:
    """(field, before, after) of every field that differs."""
    before, after = before or {}, after or {}
    keys = sorted(set(before) | set(after))
    return [
        (key, before.get(key), after.get(key)) for key in keys if before.get(key) != after.get(key)
    ]


# Webhooks -----------------------------------------------------------------------------


def _webhooks_page(
    page: Page, session: DbSession, status_code: int = 200, **extra: Any
) -> Response:
    hooks = list(session.scalars(select(Webhook).order_by(Webhook.id)).all())
    deliveries = alerts.list_deliveries(session, None, 50)
    context: dict[str, Any] = {"new_secret": None, "errors": {}, "values": {}, "test_result": None}
    context.update(extra)
    return render(page, "webhooks.html", status_code, hooks=hooks, deliveries=deliveries, **context)


@router.get("/admin/webhooks")
def webhook_list(page: ViewerPage, session: DbSession) -> Response:
    return _webhooks_page(page, session)


WEBHOOK_ERRORS = {
    "invalid_webhook_url": N_("Enter an http:// or https:// address without credentials."),
    "webhook_target_forbidden": N_(
        "This address is internal; set TOKENLEDGER_WEBHOOKS_ALLOW_PRIVATE=true to allow it."
    ),
    "webhook_host_unresolvable": N_("This host name cannot be resolved."),
}


@router.post("/admin/webhooks")
def webhook_create(page: AdminPage, session: DbSession, form: Form) -> Response:
    values = {"url": forms.text(form, "url"), "description": forms.text(form, "description")}
    try:
        data = WebhookCreate.model_validate(values)
    except ValidationError as exc:
        errors = forms.field_errors(exc)
        if "url" in errors:
            errors["url"] = (WEBHOOK_ERRORS["invalid_webhook_url"], {})
        return _webhooks_page(page, session, 422, errors=errors, values=values)
    assert page.principal is not None
    try:
        hook = webhooks.create_webhook(
            session, data, actor=page.principal, allow_private=page.settings.webhooks_allow_private
        )
    except DomainError as exc:  # the target refused before anything was written
        errors = forms.error("url", WEBHOOK_ERRORS.get(exc.code, exc.message))
        return _webhooks_page(page, session, exc.status, errors=errors, values=values)
    # The signing secret is shown in this answer only.
    return _webhooks_page(page, session, 201, new_secret=(hook.url, hook.secret))


@router.post("/admin/webhooks/{webhook_id}/delete")
def webhook_delete(webhook_id: RowId, page: AdminPage, session: DbSession, form: Form) -> Response:
    assert page.principal is not None
    webhooks.delete_webhook(session, webhook_id, actor=page.principal)
    return redirect("/admin/webhooks", flash=("success", N_("Webhook deleted."), {}))


@router.post("/admin/webhooks/{webhook_id}/test")
def webhook_test(webhook_id: RowId, page: AdminPage, session: DbSession, form: Form) -> Response:
    hook = webhooks.get_webhook(session, webhook_id)
    status, error = webhooks.send_test(hook, page.settings.webhooks_allow_private)
    ok = status is not None and 200 <= status < 300
    return _webhooks_page(
        page, session, test_result={"url": hook.url, "ok": ok, "status": status, "error": error}
    )


# Prices -------------------------------------------------------------------------------


def _pricing_page(page: Page, session: DbSession, status_code: int = 200, **extra: Any) -> Response:
    context: dict[str, Any] = {"errors": {}, "values": {}}
    context.update(extra)
    events = queries.recent_events(session, None, 25)
    org_ids = {event.organization_id for event, _price in events}
    names = (
        dict(
            session.execute(
                select(Organization.id, Organization.name).where(Organization.id.in_(org_ids))
            ).all()
        )
        if org_ids
        else {}
    )
    return render(
        page,
        "pricing.html",
        status_code,
        overrides=[overrides.rates_json(row) for row in overrides.list_overrides(session)],
        unpriced=overrides.unpriced_models(session),
        events=events,
        org_names=names,
        RATE_FIELDS=RATE_FIELDS,
        PRICING_LABELS=PRICING_LABELS,
        **context,
    )


@router.get("/admin/pricing")
def pricing(page: ViewerPage, session: DbSession) -> Response:
    return _pricing_page(page, session)


@router.post("/admin/pricing")
def pricing_set(page: AdminPage, session: DbSession, form: Form) -> Response:
    values = {name: forms.text(form, name) for name in ("provider", "model")}
    values.update({name: forms.text(form, name) for name, _label in RATE_FIELDS})
    values.update({name: forms.text(form, name) for name in ("valid_from", "valid_until")})
    tz = page.settings.timezone
    # The API's schema (PUT /api/pricing/overrides/...); provider and model are its path.
    given = {name: values[name] for name, _label in RATE_FIELDS if values[name]}
    given["valid_from"] = forms.day_start(form, "valid_from", tz)
    given["valid_until"] = forms.day_start(form, "valid_until", tz, after=True)
    errors: forms.Errors = {}
    data = None
    try:
        data = OverrideSet.model_validate({k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        errors = forms.field_errors(exc)
        for name in ("valid_from", "valid_until"):
            if name in errors:
                errors[name] = (N_("Enter a date."), {})
    for name in ("provider", "model"):
        if not values[name]:
            errors[name] = (N_("This field is required."), {})
    if data and data.valid_from and data.valid_until and data.valid_until <= data.valid_from:
        errors["valid_until"] = (forms.VALIDITY_ERROR, {})
    if errors or data is None:
        return _pricing_page(page, session, 422, errors=errors, values=values)
    assert page.principal is not None
    try:
        row = overrides.set_override(
            session,
            provider=values["provider"],
            model=values["model"],
            rates=data.model_dump(include=set(overrides.RATE_FIELDS)),
            actor=page.principal,
            valid_from=data.valid_from,
            valid_until=data.valid_until,
            now=page.now,
        )
    except DomainError as exc:  # refused before anything was written
        field = exc.message.split(":", 1)[0] if exc.code == "invalid_rate" else "model"
        message = (
            N_("Enter USD per million tokens, between 0 and 1000000, at most 9 decimal places.")
            if exc.code == "invalid_rate"
            else exc.message
        )
        errors = forms.error(field if field in values else "input", message)
        return _pricing_page(page, session, exc.status, errors=errors, values=values)
    return redirect(
        "/admin/pricing",
        flash=("success", N_("Price override for %(model)s saved."), {"model": row.model}),
    )


@router.post("/admin/pricing/delete")
def pricing_unset(page: AdminPage, session: DbSession, form: Form) -> Response:
    provider, model = forms.text(form, "provider"), forms.text(form, "model")
    try:
        valid_from = datetime.fromisoformat(forms.text(form, "valid_from"))
    except ValueError as exc:
        raise DomainError(422, "invalid_valid_from", "invalid valid_from") from exc
    assert page.principal is not None
    overrides.unset_override(
        session,
        provider=provider,
        model=model,
        actor=page.principal,
        valid_from=valid_from,
    )
    return redirect(
        "/admin/pricing",
        flash=("success", N_("Price override for %(model)s removed."), {"model": model}),
    )


# Admin users (admin role only) --------------------------------------------------------

USER_ERRORS = {
    "invalid_email": ("email", N_("Enter an email address.")),
    "invalid_role": ("role", N_("Choose one of the options.")),
    "weak_password": (
        "password",
        N_("Use at least 10 characters that are not easy to guess, and not the email address."),
    ),
    "admin_exists": ("email", N_("An account with this email exists already.")),
}


def _users_page(page: Page, session: DbSession, status_code: int = 200, **extra: Any) -> Response:
    context: dict[str, Any] = {"errors": {}, "values": {"role": "viewer"}}
    context.update(extra)
    return render(
        page,
        "users.html",
        status_code,
        users=auth_service.list_admins(session),
        roles=ROLES,
        ROLE_LABELS=ROLE_LABELS,
        **context,
    )


@router.get("/admin/users")
def users(page: AdminPage, session: DbSession) -> Response:
    return _users_page(page, session)


@router.post("/admin/users")
def user_create(page: AdminPage, session: DbSession, form: Form) -> Response:
    values = {"email": forms.text(form, "email"), "role": forms.text(form, "role")}
    password = str(form.get("password", ""))
    assert page.principal is not None
    try:
        user = auth_service.create_admin(
            session, values["email"], password, values["role"], actor=page.principal
        )
    except DomainError as exc:  # refused before anything was written
        field, message = USER_ERRORS.get(exc.code, ("email", exc.message))
        return _users_page(page, session, exc.status, errors={field: (message, {})}, values=values)
    return redirect(
        "/admin/users", flash=("success", N_("Account %(email)s created."), {"email": user.email})
    )


@router.post("/admin/users/{user_id}/disable")
def user_disable(user_id: RowId, page: AdminPage, session: DbSession, form: Form) -> Response:
    return _set_disabled(page, session, user_id, True)


@router.post("/admin/users/{user_id}/enable")
def user_enable(user_id: RowId, page: AdminPage, session: DbSession, form: Form) -> Response:
    return _set_disabled(page, session, user_id, False)


def _set_disabled(page: Page, session: DbSession, user_id: int, disabled: bool) -> Response:
    assert page.principal is not None
    if user_id == page.principal.user_id and disabled:
        raise DomainError(409, "own_account", N_("You cannot disable your own account."))
    user = auth_service.set_disabled(session, user_id, disabled, actor=page.principal, now=page.now)
    message = N_("Account %(email)s disabled.") if disabled else N_("Account %(email)s enabled.")
    return redirect("/admin/users", flash=("success", message, {"email": user.email}))


# Ingest keys --------------------------------------------------------------------------


def _keys_page(page: Page, session: DbSession, status_code: int = 200, **extra: Any) -> Response:
    context: dict[str, Any] = {"errors": {}, "values": {}, "new_key": None}
    context.update(extra)
    orgs = list(session.scalars(select(Organization).order_by(Organization.name)).all())
    return render(
        page,
        "keys.html",
        status_code,
        keys=auth_service.list_api_keys(session),
        orgs=orgs,
        org_by_id={org.id: org for org in orgs},
        org_options=[(org.slug, org.name) for org in orgs if org.archived_at is None],
        **context,
    )


@router.get("/admin/keys")
def keys(page: ViewerPage, session: DbSession) -> Response:
    return _keys_page(page, session)


@router.post("/admin/keys")
def key_create(page: AdminPage, session: DbSession, form: Form) -> Response:
    name, org_slug = forms.text(form, "name"), forms.optional(form, "organization")
    values = {"name": name, "organization": org_slug or ""}
    assert page.principal is not None
    try:
        _key, secret = auth_service.create_api_key(session, name, org_slug, actor=page.principal)
    except DomainError as exc:  # refused before anything was written
        errors = forms.key_error(exc)
        return _keys_page(page, session, exc.status, errors=errors, values=values)
    return _keys_page(page, session, 201, new_key=secret)


@router.post("/keys/{key_id}/revoke")
def key_revoke(key_id: RowId, page: AdminPage, session: DbSession, form: Form) -> Response:
    assert page.principal is not None
    key = auth_service.revoke_api_key(session, key_id, actor=page.principal, now=page.now)
    back = forms.text(form, "back")
    target = (
        back if back in ("/admin/keys",) or back.startswith("/organizations/") else "/admin/keys"
    )
    return redirect(target, flash=("success", N_("Key %(name)s revoked."), {"name": key.name}))


# Pattern page -------------------------------------------------------------------------


@router.get("/patterns")
def patterns(page: ViewerPage) -> Response:
    """Every component of the UI on one page, with made-up figures."""
    chart = bar_chart(
        [
            (page.fmt.month_short(f"2026-{m:02d}"), Decimal(v), page.fmt.month(f"2026-{m:02d}"))
            for m, v in zip(range(6, 12), (120, 340, 280, 515, 460, 190), strict=True)
        ]
    )
    samples = [
        Meter("credits", 12_500 * 10**6, 50_000 * 10**6, 80, 25.0),
        Meter("usd", 170 * 10**9, 200 * 10**9, 80, 85.0),
        Meter("usd", 230 * 10**9, 200 * 10**9, 80, 115.0),
        Meter("credits", 900 * 10**6, None, 80, None),
    ]
    return render(
        page,
        "patterns.html",
        chart=chart,
        samples=samples,
        errors={"sample": (N_("Must be at least %(ge)s."), {"ge": "1"})},
        values={"sample": "0"},
    )
