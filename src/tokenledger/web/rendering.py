"""What every page renders with: the labels of states, statuses and kinds, and render()."""

from __future__ import annotations

from typing import Any

from fastapi.responses import Response

from tokenledger.web.common import Page
from tokenledger.web.i18n import N_

STATE_LABELS = {
    "ok": N_("OK"),
    "warning": N_("Warning"),
    "exhausted": N_("Exhausted"),
    "no_license": N_("No license"),
    "suspended": N_("Suspended"),
    "unlimited": N_("Unlimited"),
}
STATUS_LABELS = {
    "active": N_("Active"),
    "suspended": N_("Suspended"),
    "expired": N_("Expired"),
    "cancelled": N_("Cancelled"),
}
PERIOD_LABELS = {"monthly": N_("Monthly"), "license": N_("License term")}
ENFORCEMENT_LABELS = {
    "soft": N_("Soft: warn, keep serving"),
    "hard": N_("Hard: refuse when exhausted"),
}
ALERT_LABELS = {
    "budget.warning": N_("Budget warning"),
    "budget.exhausted": N_("Budget exhausted"),
    "credits.warning": N_("Credits warning"),
    "credits.exhausted": N_("Credits exhausted"),
    "budget.forecast": N_("Budget forecast"),
    "provider.drift": N_("Provider bill drift"),
}
DELIVERY_LABELS = {
    "pending": N_("Pending"),
    "delivered": N_("Delivered"),
    "failed": N_("Failed"),
}
common_context = {
    "STATE_LABELS": STATE_LABELS,
    "STATUS_LABELS": STATUS_LABELS,
    "PERIOD_LABELS": PERIOD_LABELS,
    "ENFORCEMENT_LABELS": ENFORCEMENT_LABELS,
    "ALERT_LABELS": ALERT_LABELS,
    "DELIVERY_LABELS": DELIVERY_LABELS,
}


def render(page: Page, template: str, status_code: int = 200, **context: Any) -> Response:
    return page.render(template, status_code, **common_context, **context)
