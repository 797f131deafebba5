"""Threshold alerts: fired once per license, type and period, in the usage transaction."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tokenledger.alerts.models import ARMED, Alert, Webhook, WebhookDelivery
from tokenledger.budgets.service import (
    Figures,
    burn_forecast,
    exhausts_before_period_end,
    figures_for,
    months_figures,
    recent_cost,
)
from tokenledger.db import insert_for
from tokenledger.licenses.models import License, LicenseTerms
from tokenledger.money import format_credits, format_usd
from tokenledger.organizations.models import Organization


def crossings(
    fig: Figures, forecast: dict[str, Any] | None
) -> list[tuple[str, str, dict[str, Any]]]:
    """(type, period, details) of every threshold the license's consumption has reached.

    The details are rendered only for what was reached: a group of usage judges every
    license it touched, and nearly all of them reach nothing.
    """
    lic = fig.license
    warn = lic.budget_warning_percent
    found: list[tuple[str, str, dict[str, Any]]] = []
    if fig.credit_limit is not None:
        used, limit = fig.credits_used_micro, fig.credit_limit
        reached = [
            alert_type
            for alert_type, crossed in (
                ("credits.exhausted", used >= limit),
                ("credits.warning", used * 100 >= limit * warn),
            )
            if crossed
        ]
        if reached:
            details = {
                "credits_used": format_credits(used),
                "credits_total": format_credits(limit),
                "warning_percent": warn,
            }
            found += [(alert_type, "license", details) for alert_type in reached]
    if fig.usd_limit is not None:
        spent, budget = fig.spent_nano, fig.usd_limit
        exhausted = spent >= budget
        reached = [
            alert_type
            for alert_type, crossed in (
                ("budget.exhausted", exhausted),
                ("budget.warning", spent * 100 >= budget * warn),
                (
                    "budget.forecast",
                    not exhausted
                    and forecast is not None
                    and forecast["budget_exhausted_before_period_end"],
                ),
            )
            if crossed
        ]
        if reached:
            details = {
                "spent_usd": format_usd(spent),
                "token_budget_usd": format_usd(budget),
                "warning_percent": warn,
                "budget_period": lic.budget_period,
            }
            found += [
                (
                    alert_type,
                    fig.period,
                    {**details, "forecast": forecast}
                    if alert_type == "budget.forecast"
                    else details,
                )
                for alert_type in reached
            ]
    return found


def months_by_license(rows: Iterable[Mapping[str, Any]]) -> dict[int, set[str]]:
    """The billing months each license's new events fall in."""
    months: dict[int, set[str]] = defaultdict(set)
    for row in rows:
        if row["license_id"] is not None:
            months[row["license_id"]].add(row["year_month"])
    return months


def evaluate(
    session: Session,
    license_ids: list[int],
    tz: Any,
    now: datetime,
    months: Mapping[int, set[str]] | None = None,
) -> list[int]:
    """Record the alerts these licenses now cross, and queue them for every webhook.

    `months`: the months new usage fell in. A monthly budget's earlier month that got
    back-dated usage is judged too, and raises that month's alerts.
    """
    if not license_ids:
        return []
    licenses = list(
        session.scalars(select(License).where(License.id.in_(license_ids)).order_by(License.id))
    )
    figures = figures_for(session, licenses, tz, now)
    return record_crossings(session, [figures[lic.id] for lic in licenses], tz, now, months)


def record_crossings(
    session: Session,
    figures: list[Figures],
    tz: Any,
    now: datetime,
    months: Mapping[int, set[str]] | None = None,
) -> list[int]:
    """Record the alerts these figures cross (once each), and queue them for every webhook.

    `months` as for evaluate: earlier months of monthly budgets that got usage.
    """
    if not figures:
        return []
    budgeted = sorted({f.license.organization_id for f in figures if f.license.token_budget_nano})
    windows = recent_cost(session, budgeted, tz, now)
    rows = []

    def add(lic: LicenseTerms, found: list[tuple[str, str, dict[str, Any]]]) -> None:
        for alert_type, period, details in found:
            rows.append(
                {
                    "organization_id": lic.organization_id,
                    "license_id": lic.id,
                    "type": alert_type,
                    "period": period,
                    "details": details,
                    "created_at": now,
                }
            )

    earlier: dict[int, tuple[Figures, list[str]]] = {}
    for fig in figures:
        lic = fig.license
        window = windows.get(lic.organization_id, 0)
        # The whole forecast only where its alert fires: rendering it is most of the cost
        # of judging a license, and a group may touch a thousand.
        forecast = (
            burn_forecast(fig, window, tz, now)
            if exhausts_before_period_end(fig, window, tz, now)
            else None
        )
        add(lic, crossings(fig, forecast))
        if lic.budget_period == "monthly" and fig.usd_limit is not None:
            earlier[lic.id] = (fig, sorted((months or {}).get(lic.id, set()) - {fig.period}))
    for license_id, by_month in months_figures(session, earlier).items():
        for month, past in by_month.items():
            # A closed month has no forecast; its credits are the license's, judged above.
            add(earlier[license_id][0].license, [c for c in crossings(past, None) if c[1] == month])
    if not rows:
        return []
    table = Alert.__table__
    insert = insert_for(session)
    new_ids = [
        row[0]
        for row in session.execute(
            insert(table)
            .on_conflict_do_nothing(
                index_elements=["license_id", "type", "period"], index_where=ARMED
            )
            .returning(table.c.id),
            rows,
        )
    ]
    if new_ids:
        queue_deliveries(session, new_ids, now)
    return new_ids


def rearm(session: Session, lic: License, tz: Any, now: datetime) -> list[int]:
    """After a change of a license's limits (or of its credits used): every armed alert of
    the current period whose threshold the license no longer reaches is re-armed, and may
    fire once more; a threshold the change newly reaches fires now. Returns new alert ids.
    """
    fig = figures_for(session, [lic], tz, now)[lic.id]
    window = recent_cost(session, [lic.organization_id], tz, now).get(lic.organization_id, 0)
    forecast = burn_forecast(fig, window, tz, now) if fig.usd_limit is not None else None
    reached = {(alert_type, period) for alert_type, period, _ in crossings(fig, forecast)}
    armed = session.scalars(
        select(Alert).where(
            Alert.license_id == lic.id,
            Alert.rearmed_at.is_(None),
            Alert.period.in_({fig.period, "license"}),
        )
    )
    for alert in armed:
        if (alert.type, alert.period) not in reached:
            alert.rearmed_at = now
    session.flush()
    return evaluate(session, [lic.id], tz, now)


def alert_payload(alert: Alert, org: Organization | None) -> dict[str, Any]:
    return {
        "id": alert.id,
        "type": alert.type,
        "organization_id": alert.organization_id,
        "organization": org.slug if org is not None else None,
        "license_id": alert.license_id,
        "period": alert.period,
        "created_at": alert.created_at.isoformat(),
        "details": alert.details,
    }


def queue_deliveries(session: Session, alert_ids: list[int], now: datetime) -> None:
    """The outbox: one delivery per alert and active webhook, in the alert's transaction."""
    hooks = list(session.scalars(select(Webhook.id).where(Webhook.active.is_(True))))
    if not hooks:
        return
    pairs = session.execute(
        select(Alert, Organization)
        .outerjoin(Organization, Organization.id == Alert.organization_id)
        .where(Alert.id.in_(alert_ids))
    ).all()
    deliveries = [
        {
            "webhook_id": hook_id,
            "alert_id": alert.id,
            "payload": json.dumps(alert_payload(alert, org), sort_keys=True),
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        for alert, org in pairs
        for hook_id in hooks
    ]
    session.execute(
        insert_for(session)(WebhookDelivery.__table__).on_conflict_do_nothing(
            index_elements=["webhook_id", "alert_id"]
        ),
        deliveries,
    )


def list_alerts(
    session: Session, org_id: int | None, alert_type: str | None, limit: int, offset: int
) -> tuple[list[Alert], int]:
    query = select(Alert)
    if org_id is not None:
        query = query.where(Alert.organization_id == org_id)
    if alert_type:
        query = query.where(Alert.type == alert_type)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.order_by(Alert.created_at.desc(), Alert.id.desc()).limit(limit).offset(offset)
    )
    return list(rows.all()), total


def deliveries_of(
    session: Session, alert_ids: list[int]
) -> dict[int, list[tuple[WebhookDelivery, Webhook]]]:
    """The webhook deliveries of these alerts, with their webhook, per alert."""
    result: dict[int, list[tuple[WebhookDelivery, Webhook]]] = {}
    if not alert_ids:
        return result
    rows = session.execute(
        select(WebhookDelivery, Webhook)
        .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
        .where(WebhookDelivery.alert_id.in_(alert_ids))
        .order_by(WebhookDelivery.id)
    ).all()
    for delivery, hook in rows:
        result.setdefault(delivery.alert_id, []).append((delivery, hook))
    return result


def list_deliveries(
    session: Session, webhook_id: int | None, limit: int
) -> list[tuple[WebhookDelivery, Alert, Organization | None]]:
    """The delivery log, newest first: status, attempts and last error of each delivery."""
    query = (
        select(WebhookDelivery, Alert, Organization)
        .join(Alert, Alert.id == WebhookDelivery.alert_id)
        .outerjoin(Organization, Organization.id == Alert.organization_id)
        .order_by(WebhookDelivery.id.desc())
        .limit(limit)
    )
    if webhook_id is not None:
        query = query.where(WebhookDelivery.webhook_id == webhook_id)
    return [(d, a, o) for d, a, o in session.execute(query).all()]
