"""Budget changes of a license: the rules of PUT /api/token-usage/budget/{id}, for API and UI."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from tokenledger.audit import service as audit
from tokenledger.errors import DomainError
from tokenledger.licenses import service as licenses
from tokenledger.licenses.models import License
from tokenledger.licenses.schemas import BudgetUpdate
from tokenledger.money import credits_to_micro, format_credits


def change_budget(
    session: Session, lic: License, data: BudgetUpdate, actor: audit.Actor, tz: Any, now: datetime
) -> None:
    """Set the given budget fields; credits_used moves through an audited adjustment.

    Every change lands in the audit log. A top-up re-arms the thresholds it moves below;
    a lower limit may fire one now.
    """
    # Imported here: alerts build on budgets and licenses, not the other way round.
    from tokenledger.alerts import service as alerts

    given = data.model_fields_set
    if not given:
        raise DomainError(422, "no_fields", "no fields to update")
    for name in given - {"token_budget_usd"}:
        if getattr(data, name) is None:
            raise DomainError(422, "invalid_value", f"{name} must not be null")
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
    alerts.rearm(session, lic, tz, now)


def budget_fields(values: dict[str, Any]) -> BudgetUpdate:
    """A BudgetUpdate of the budget keys among these values (the others are left out)."""
    keys = set(BudgetUpdate.model_fields) & set(values)
    return BudgetUpdate.model_validate({key: values[key] for key in keys})
