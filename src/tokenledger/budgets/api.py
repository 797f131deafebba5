"""May an organization spend now, and holds before a run (ingest keys)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictInt, StrictStr, model_validator
from starlette.concurrency import run_in_threadpool

from tokenledger.auth.service import touch_api_key
from tokenledger.budgets import service
from tokenledger.config import Settings
from tokenledger.deps import AppSettings, IngestKey, Now, Session, UsageKey, get_database, get_hot
from tokenledger.errors import DomainError
from tokenledger.ledger.api import organization_for_key, organization_ref_for_key
from tokenledger.money import format_usd, usd_to_nano
from tokenledger.pricing.engine import TokenUsage
from tokenledger.pricing.overrides import price_book
from tokenledger.schemas import ORGANIZATION_RULE, PRINTABLE, InputModel, PathText, Text
from tokenledger.usage.schemas import BudgetStateRead, TokenCount, UsdInput

router = APIRouter(prefix="/api/v1", tags=["budgets"])


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


@router.get("/budget", response_model=BudgetStateRead)
async def get_budget(
    request: Request,
    key: UsageKey,
    now: Now,
    organization: Annotated[
        str | None, Query(max_length=64, pattern=PRINTABLE, description=ORGANIZATION_RULE)
    ] = None,
) -> JSONResponse:
    """The key, the organization and its licenses from memory; the figures in one statement.

    On SQLite that statement is read right here: it costs less than the trip to a pool
    thread, and a WAL reader never waits for the writer. Elsewhere (a network round trip),
    and when the key's use is to be recorded (a write), it runs in a pool thread.
    """
    settings: Settings = request.app.state.settings
    database = get_database(request)
    hot = get_hot(request)
    org = organization_ref_for_key(hot, key, organization)
    licenses = {org.id: hot.licenses(org.id)}

    def read() -> dict[str, Any]:
        if key.touch_due:
            with database.session(write=True) as touch:
                touch_api_key(touch, key.key_id, now)
        with database.single_read() as connection:
            return service.budget_states(
                connection, [org], settings.timezone, now, forecast=True, licenses=licenses
            )[0]

    if key.touch_due or database.dialect_name != "sqlite":
        state = await run_in_threadpool(read)
    else:
        state = read()
    # Plain values in the documented shape (budgets.service.render_state, as the ingest
    # answer's budgets): validating them again on the way out would cost more than the read.
    return JSONResponse(state)


def _estimate_nano(session: Session, data: ReservationCreate, now: datetime) -> int:
    if data.max_cost_usd is not None:
        return usd_to_nano(data.max_cost_usd)
    assert data.model is not None
    book = price_book(session)
    provider = data.provider or book.provider_for(data.model) or "unknown"
    quote = book.quote(
        provider.lower(),
        data.model,
        TokenUsage(
            input_tokens=data.max_input_tokens or 0, output_tokens=data.max_output_tokens or 0
        ),
        now,
    )
    if quote is None:
        raise DomainError(
            422, "unpriced_model", f"cannot price {provider}/{data.model}: give max_cost_usd"
        )
    return quote.cost_nano


@router.post("/reservations", status_code=201)
def create_reservation(
    data: ReservationCreate, session: Session, key: IngestKey, settings: AppSettings, now: Now
) -> ReservationRead:
    org = organization_for_key(session, key, data.organization)
    amount = _estimate_nano(session, data, now)
    ttl = data.ttl_seconds or settings.reservation_ttl_seconds
    reservation, state = service.create_reservation(
        session, org, amount, ttl, settings.timezone, now
    )
    return ReservationRead(
        id=reservation.id,
        organization=org.slug,
        status=reservation.status,
        amount_usd=format_usd(reservation.amount_nano) or "0.00",
        expires_at=reservation.expires_at,
        budget=BudgetStateRead.model_validate(state),
    )


@router.delete("/reservations/{reservation_id}", status_code=204)
def delete_reservation(
    reservation_id: PathText, session: Session, key: IngestKey, now: Now
) -> Response:
    service.release_reservation(session, reservation_id, key.organization_id, now)
    return Response(status_code=204)
