"""The int64 bound of the ledger's sums: a batch that would carry one past it is refused
alone (409 ledger_limit), before any SQL changes a row.

Owns the totals read before a group (two indexed queries) and the check of each batch
against them; the largest single event is bounded at prepare (money.MAX_EVENT_USD).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, select
from sqlalchemy.orm import Session

from tokenledger.db import driver_read, read_rows
from tokenledger.errors import DomainError
from tokenledger.licenses.models import License
from tokenledger.money import INT64_MAX
from tokenledger.usage.models import ROLLUP_FIELDS, LicenseUsage, TokenUsageMonthly

_MONTHLY = cast(Table, TokenUsageMonthly.__table__)
_LICENSE_USAGE = cast(Table, LicenseUsage.__table__)
_LICENSES = cast(Table, License.__table__)
# Every organization's all-time sums (token_usage_monthly holds them by month; the daily
# and license rollups are parts of them), and every license's credits: used (events plus
# adjustments) and of its events alone (what reconcile adds up).
_ORG_TOTALS = driver_read(
    select(
        _MONTHLY.c.organization_id,
        *(func.coalesce(func.sum(_MONTHLY.c[name]), 0) for name in ROLLUP_FIELDS),
    )
    .where(_MONTHLY.c.organization_id.in_(bindparam("orgs", expanding=True)))
    .group_by(_MONTHLY.c.organization_id)
)
_LICENSE_TOTALS = driver_read(
    select(
        _LICENSES.c.id,
        _LICENSES.c.credits_used_micro,
        select(func.coalesce(func.sum(_LICENSE_USAGE.c.credits_micro), 0))
        .where(_LICENSE_USAGE.c.license_id == _LICENSES.c.id)
        .scalar_subquery(),
    ).where(_LICENSES.c.id.in_(bindparam("ids", expanding=True)))
)


@dataclass(slots=True)
class LedgerRoom:
    """What the sums the ledger keeps hold before a group, so that a batch that would
    carry one past int64 (the largest integer either database stores) is refused alone,
    in Python integers and before any SQL changes a row.

    An organization's all-time totals bound every rollup row of it (month, day, license)
    and every sum over them that a page or a budget reads; a license's credits bound its
    credits_used and what reconcile adds up. Read in two indexed queries per group, under
    the locks the group already holds (the writer on SQLite, the organizations' rows on
    PostgreSQL), so nothing else adds to them meanwhile.
    """

    orgs: dict[int, list[int]]  # organization: sums in the order of ROLLUP_FIELDS
    licenses: dict[int, list[int]]  # license: [credits used, credits of its events]

    @classmethod
    def read(cls, session: Session, org_ids: list[int], license_ids: list[int]) -> LedgerRoom:
        orgs: dict[int, list[int]] = {org_id: [0] * len(ROLLUP_FIELDS) for org_id in org_ids}
        if org_ids:
            for org_id, *sums in read_rows(session, _ORG_TOTALS, {"orgs": org_ids}):
                orgs[org_id] = [int(value) for value in sums]
        found: dict[int, list[int]] = {}
        if license_ids:
            for license_id, used, of_events in read_rows(
                session, _LICENSE_TOTALS, {"ids": license_ids}
            ):
                found[license_id] = [int(used), int(of_events)]
        return cls(orgs, found)

    def take(self, rows: list[dict[str, Any]]) -> None:
        """Count a batch's new events in, or refuse them all (409) if a sum would pass int64."""
        by_org: dict[int, list[int]] = {}
        by_license: dict[int, int] = {}
        for row in rows:
            sums = by_org.get(row["organization_id"])
            if sums is None:
                sums = by_org[row["organization_id"]] = [0] * 6
            sums[0] += row["input_tokens"]
            sums[1] += row["output_tokens"]
            sums[2] += row["cache_creation_input_tokens"]
            sums[3] += row["cache_read_input_tokens"]
            sums[4] += row["cost_nano"] or 0
            sums[5] += row["api_calls"]
            if row["license_id"] is not None:
                license_id = row["license_id"]
                by_license[license_id] = by_license.get(license_id, 0) + (row["credits_micro"] or 0)
        # Event counts (one per event) and unpriced counts never near the bound: not checked.
        for org_id, added in by_org.items():
            totals = self.orgs[org_id]
            for position, value in enumerate(added):
                if totals[position] + value > INT64_MAX:
                    raise _past_the_bound(f"organization {org_id}'s {ROLLUP_FIELDS[position]}")
        for license_id, credits in by_license.items():
            if any(total + credits > INT64_MAX for total in self.licenses[license_id]):
                raise _past_the_bound(f"license {license_id}'s credits used")
        for org_id, added in by_org.items():
            totals = self.orgs[org_id]
            for position, value in enumerate(added):
                totals[position] += value
        for license_id, credits in by_license.items():
            self.licenses[license_id] = [total + credits for total in self.licenses[license_id]]


def _past_the_bound(what: str) -> DomainError:
    return DomainError(
        409,
        "ledger_limit",
        f"this batch would carry {what} past {INT64_MAX}, the largest sum the ledger "
        "keeps: nothing of it was stored",
    )
