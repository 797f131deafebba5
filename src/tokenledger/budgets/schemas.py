"""Budget shapes: a budget's state (GET /api/v1/budget, the ingest answer), its update,
and holds (reservations)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StrictInt, StrictStr, model_validator

from tokenledger.licenses.schemas import Credits, PricePerCredit, UsdAmount, WarningPercent
from tokenledger.schemas import (
    ORGANIZATION_RULE,
    PRINTABLE,
    InputModel,
    Text,
    TokenCount,
    UsdInput,
)


class BudgetUpdate(InputModel):
    """The origin's budget keys, typed and bounded; nothing else is accepted."""

    token_budget_usd: UsdAmount | None = None
    credits_total: Credits | None = None
    cost_per_credit: PricePerCredit | None = None
    budget_warning_percent: WarningPercent | None = None
    credits_used: Credits | None = None


class BudgetStateRead(BaseModel):
    organization: str
    organization_id: int
    allowed: bool
    state: Literal["ok", "warning", "exhausted", "no_license", "suspended"]
    license_id: int | None
    enforcement: str | None
    budget_period: str | None
    period: str | None
    credits_total: str | None
    credits_used: str | None
    credits_reserved: str | None
    credits_remaining: str | None
    token_budget_usd: str | None
    spent_usd: str | None
    reserved_usd: str | None
    remaining_usd: str | None
    forecast: dict[str, Any] | None = None


class ReservationCreate(InputModel):
    """Give max_cost_usd, or model with max_input_tokens and/or max_output_tokens (the
    model's price then estimates the hold), not both (422 otherwise)."""

    organization: Text | StrictInt | None = Field(default=None, description=ORGANIZATION_RULE)
    max_cost_usd: UsdInput | None = None
    # Inferred from the model when not given, as for usage events.
    provider: StrictStr | None = Field(default=None, min_length=1, max_length=64, pattern=PRINTABLE)
    model: StrictStr | None = Field(default=None, min_length=1, max_length=128, pattern=PRINTABLE)
    max_input_tokens: TokenCount | None = None
    max_output_tokens: TokenCount | None = None
    ttl_seconds: Annotated[StrictInt, Field(ge=1, le=86_400)] | None = None

    @model_validator(mode="after")
    def _amount_given(self) -> ReservationCreate:
        by_model = self.model is not None
        if self.max_cost_usd is None and not by_model:
            raise ValueError("give max_cost_usd, or model with max_input_tokens/max_output_tokens")
        if self.max_cost_usd is not None and by_model:
            raise ValueError("give either max_cost_usd or a model estimate, not both")
        if by_model and self.max_input_tokens is None and self.max_output_tokens is None:
            raise ValueError("a model estimate needs max_input_tokens or max_output_tokens")
        return self


class ReservationRead(BaseModel):
    id: str
    organization: str
    status: str
    amount_usd: str
    expires_at: datetime
    budget: BudgetStateRead
