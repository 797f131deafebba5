"""Plain factory functions for test data, written through the services."""

from __future__ import annotations

import itertools
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session

from tokenledger.db import utcnow
from tokenledger.licenses import service as licenses
from tokenledger.licenses.models import License
from tokenledger.licenses.schemas import LicenseCreate
from tokenledger.organizations import service as organizations
from tokenledger.organizations.models import Organization
from tokenledger.organizations.schemas import OrganizationCreate

_counter = itertools.count(1)


def make_org(session: Session, **overrides: Any) -> Organization:
    n = next(_counter)
    values: dict[str, Any] = {"name": f"Org {n}", "slug": f"org-{n}"}
    values.update(overrides)
    return organizations.create(session, OrganizationCreate(**values), actor=None)


def make_license(
    session: Session, org: Organization, now: datetime | None = None, **overrides: Any
) -> License:
    """A license valid from now (default: the real clock) unless overrides say when."""
    values: dict[str, Any] = {
        "organization_id": org.id,
        "credits_total": Decimal(1000),
        "cost_per_credit": Decimal("0.01"),
        "token_budget_usd": Decimal(100),
    }
    values.update(overrides)
    return licenses.create(session, LicenseCreate(**values), now or utcnow(), actor=None)
