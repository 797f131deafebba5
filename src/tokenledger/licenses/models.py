"""Licenses: a credit allowance and a USD budget for one organization, over a validity."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Protocol

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from tokenledger.db import Base, BigId, UTCDateTime, utcnow

LICENSE_STATUSES = ("active", "suspended", "expired", "cancelled")
BUDGET_PERIODS = ("monthly", "license")
ENFORCEMENTS = ("soft", "hard")


class License(Base):
    __tablename__ = "licenses"
    __table_args__ = (
        # At most one active license per organization, kept by the database itself.
        Index(
            "uq_licenses_one_active_per_org",
            "organization_id",
            unique=True,
            sqlite_where=text("status = 'active'"),
            postgresql_where=text("status = 'active'"),
        ),
        CheckConstraint("status IN ('active','suspended','expired','cancelled')", name="status"),
        CheckConstraint("budget_period IN ('monthly','license')", name="budget_period"),
        CheckConstraint("enforcement IN ('soft','hard')", name="enforcement"),
        CheckConstraint("credits_total_micro >= 0", name="credits_total"),
        CheckConstraint("cost_per_credit_nano > 0", name="cost_per_credit"),
        CheckConstraint("token_budget_nano IS NULL OR token_budget_nano >= 0", name="token_budget"),
        CheckConstraint("budget_warning_percent BETWEEN 1 AND 100", name="budget_warning_percent"),
        CheckConstraint("valid_until IS NULL OR valid_until > valid_from", name="validity"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="active")
    valid_from: Mapped[datetime] = mapped_column(UTCDateTime)
    valid_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    credits_total_micro: Mapped[int] = mapped_column(BigInteger)
    cost_per_credit_nano: Mapped[int] = mapped_column(BigInteger)
    token_budget_nano: Mapped[int | None] = mapped_column(BigInteger, default=None)
    budget_period: Mapped[str] = mapped_column(String(16), default="monthly")
    budget_warning_percent: Mapped[int] = mapped_column(Integer, default=80)
    enforcement: Mapped[str] = mapped_column(String(8), default="soft")
    # Maintained in the transaction of every usage batch and adjustment:
    # the sum of its events' credits plus the sum of its adjustments.
    credits_used_micro: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class CreditAdjustment(Base):
    """An explicit, audited change of a license's credits_used (never a silent overwrite)."""

    __tablename__ = "credit_adjustments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    license_id: Mapped[int] = mapped_column(ForeignKey("licenses.id"), index=True)
    delta_micro: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(500), default="")
    actor: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class LicenseTerms(Protocol):
    """What the ledger's rules read of a license, its terms: a License row, a LicenseRow
    snapshot, or the LicenseTermsRow the budget check keeps in memory. Not its credits
    used, which every batch changes: budgets.service reads them with the figures."""

    @property
    def id(self) -> int: ...
    @property
    def organization_id(self) -> int: ...
    @property
    def status(self) -> str: ...
    @property
    def valid_from(self) -> datetime: ...
    @property
    def valid_until(self) -> datetime | None: ...
    @property
    def credits_total_micro(self) -> int: ...
    @property
    def cost_per_credit_nano(self) -> int: ...
    @property
    def token_budget_nano(self) -> int | None: ...
    @property
    def budget_period(self) -> str: ...
    @property
    def budget_warning_percent(self) -> int: ...
    @property
    def enforcement(self) -> str: ...


@dataclass(frozen=True, slots=True)
class LicenseTermsRow:
    """A license's terms as read by one Core query, without its credits used: what the
    write path reads for a group (no ORM objects: a group may touch a thousand licenses),
    what the budget check keeps in memory and the overview reads."""

    id: int
    organization_id: int
    status: str
    valid_from: datetime
    valid_until: datetime | None
    credits_total_micro: int
    cost_per_credit_nano: int
    token_budget_nano: int | None
    budget_period: str
    budget_warning_percent: int
    enforcement: str


# The columns of LicenseTermsRow, in its order.
LICENSE_TERMS_COLUMNS = tuple(field.name for field in fields(LicenseTermsRow))
