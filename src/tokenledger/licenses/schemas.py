"""License request and response shapes. Money is exact decimal text in JSON."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, Field, model_validator

from tokenledger.db import MAX_ROW_ID
from tokenledger.money import (
    MAX_COST_PER_CREDIT,
    MAX_CREDITS,
    MAX_USD,
    MIN_COST_PER_CREDIT,
)
from tokenledger.schemas import InputModel, Instant

LicenseStatus = Literal["active", "suspended", "expired", "cancelled"]
BudgetPeriod = Literal["monthly", "license"]
Enforcement = Literal["soft", "hard"]

Credits = Annotated[
    Decimal, Field(ge=0, le=MAX_CREDITS, decimal_places=6, allow_inf_nan=False, strict=False)
]
UsdAmount = Annotated[Decimal, Field(ge=0, le=MAX_USD, decimal_places=9, allow_inf_nan=False)]
PricePerCredit = Annotated[
    Decimal,
    Field(
        ge=MIN_COST_PER_CREDIT,
        le=MAX_COST_PER_CREDIT,
        decimal_places=9,
        allow_inf_nan=False,
        description=f"USD per credit, {MIN_COST_PER_CREDIT} to {MAX_COST_PER_CREDIT}",
    ),
]
WarningPercent = Annotated[int, Field(ge=1, le=100, strict=True)]


class LicenseCreate(InputModel):
    """A license of an existing organization (404 otherwise); at most one active license
    per organization (a second is a 409)."""

    organization_id: Annotated[int, Field(ge=1, le=MAX_ROW_ID)]
    status: LicenseStatus = "active"
    valid_from: Instant | None = Field(default=None, description="default: now")
    valid_until: Instant | None = Field(
        default=None, description="after valid_from (422 otherwise); default: open-ended"
    )
    credits_total: Credits
    cost_per_credit: PricePerCredit
    token_budget_usd: UsdAmount | None = None
    budget_period: BudgetPeriod = "monthly"
    budget_warning_percent: WarningPercent = 80
    enforcement: Enforcement = "soft"

    @model_validator(mode="after")
    def _validity(self) -> LicenseCreate:
        if self.valid_from and self.valid_until and self.valid_until <= self.valid_from:
            raise ValueError("valid_until must be after valid_from")
        return self


class LicenseUpdate(InputModel):
    status: LicenseStatus | None = None
    valid_from: Instant | None = None
    valid_until: Instant | None = None
    credits_total: Credits | None = None
    cost_per_credit: PricePerCredit | None = None
    token_budget_usd: UsdAmount | None = None
    budget_period: BudgetPeriod | None = None
    budget_warning_percent: WarningPercent | None = None
    enforcement: Enforcement | None = None


class LicenseRead(BaseModel):
    id: int
    organization_id: int
    status: str
    valid_from: datetime
    valid_until: datetime | None
    credits_total: Decimal
    credits_used: Decimal
    credits_remaining: Decimal
    cost_per_credit: Decimal
    token_budget_usd: Decimal | None
    budget_period: str
    budget_warning_percent: int
    enforcement: str
    created_at: datetime
    updated_at: datetime
