"""Changes of what limits a license's usage: its terms and its budget (a top-up is one).

Each function is the whole write, in the caller's transaction: checked first (a refusal
changes nothing), then the change, its audit entries, and the alerts it re-arms (a top-up
re-arms the thresholds it moves below; a lower limit may fire one now). The API routes,
the license form and the command line all call these.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from tokenledger.alerts import service as alerts
from tokenledger.audit import service as audit
from tokenledger.budgets.schemas import BudgetUpdate
from tokenledger.errors import DomainError
from tokenledger.licenses import service as licenses
from tokenledger.licenses.models import License
from tokenledger.licenses.schemas import LicenseUpdate
from tokenledger.money import credits_to_micro, format_credits


def update_license(
    session: Session,
    lic: License,
    data: LicenseUpdate,
    *,
    actor: audit.Actor,
    tz: Any,
    now: datetime,
    budget: BudgetUpdate | None = None,
) -> License:
    """PATCH /api/licenses/{id} and the license form: the terms, and (the form) the budget
    by change_budget's rules; audited, alerts re-armed once, after both."""
    licenses.check_update(session, lic, data)
    if budget is not None:
        check_budget(budget)
    before = licenses.snapshot(lic)
    licenses.update_license(session, lic, data, now)
    audit.record_change(
        session,
        actor,
        "license.update",
        "license",
        lic.id,
        before=before,
        after=licenses.snapshot(lic),
    )
    if budget is not None:
        _change_budget(session, lic, budget, actor, now)
    alerts.rearm(session, lic, tz, now)
    return lic


def change_budget(
    session: Session,
    lic: License,
    data: BudgetUpdate,
    *,
    actor: audit.Actor,
    tz: Any,
    now: datetime,
) -> License:
    """PUT /api/token-usage/budget/{id}: set the given budget fields (a top-up raises
    credits_total); credits_used moves through an audited adjustment; alerts re-armed."""
    check_budget(data)
    _change_budget(session, lic, data, actor, now)
    alerts.rearm(session, lic, tz, now)
    return lic


def check_budget(data: BudgetUpdate) -> None:
    """Raise what change_budget would refuse, before anything is changed."""
    given = data.model_fields_set
    if not given:
        raise DomainError(422, "no_fields", "no fields to update")
    for name in given - {"token_budget_usd"}:
        if getattr(data, name) is None:
            raise DomainError(422, "invalid_value", f"{name} must not be null")


def _change_budget(
    session: Session, lic: License, data: BudgetUpdate, actor: audit.Actor, now: datetime
) -> None:
    given = data.model_fields_set
    before = licenses.snapshot(lic)
    licenses.apply_budget(
        lic,
        credits_total=data.credits_total,
        cost_per_credit=data.cost_per_credit,
        token_budget_usd=data.token_budget_usd,
        token_budget_given="token_budget_usd" in given,
        budget_warning_percent=data.budget_warning_percent,
    )
    lic.updated_at = now
    session.flush()
    if data.credits_used is not None:
        adjustment = licenses.adjust_credits_used(
            session,
            lic,
            credits_to_micro(data.credits_used),
            actor=actor.email,
            reason="credits_used set through PUT /api/token-usage/budget",
        )
        audit.record_change(
            session,
            actor,
            "license.credits_adjustment",
            "license",
            lic.id,
            before={
                "credits_used": format_credits(lic.credits_used_micro - adjustment.delta_micro)
            },
            after={
                "credits_used": format_credits(lic.credits_used_micro),
                "delta": format_credits(adjustment.delta_micro),
            },
        )
    audit.record_change(
        session,
        actor,
        "license.budget_update",
        "license",
        lic.id,
        before=before,
        after=licenses.snapshot(lic),
    )


def budget_fields(values: dict[str, Any]) -> BudgetUpdate:
    """A BudgetUpdate of the budget keys among these values (the others are left out)."""
    keys = set(BudgetUpdate.model_fields) & set(values)
    return BudgetUpdate.model_validate({key: values[key] for key in keys})
