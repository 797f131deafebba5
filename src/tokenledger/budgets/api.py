"""May an organization spend now, and holds before a run (ingest keys)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from tokenledger.auth.service import touch_api_key
from tokenledger.budgets import changes, service
from tokenledger.budgets.schemas import (
    BudgetStateRead,
    BudgetUpdate,
    ReservationCreate,
    ReservationRead,
)
from tokenledger.config import Settings
from tokenledger.deps import (
    Admin,
    AppSettings,
    IngestKey,
    Now,
    RowId,
    Session,
    UsageKey,
    get_database,
    get_hot,
)
from tokenledger.licenses import service as licenses
from tokenledger.money import format_usd
from tokenledger.organizations import refs
from tokenledger.schemas import ORGANIZATION_RULE, PRINTABLE, PathText

router = APIRouter(prefix="/api/v1", tags=["budgets"])
# The origin's budget route (admin), beside the other /api/token-usage routes in the docs.
admin_router = APIRouter(tags=["token-usage"])


@admin_router.put("/api/token-usage/budget/{license_id}")
def update_budget(
    license_id: RowId,
    data: BudgetUpdate,
    session: Session,
    admin: Admin,
    settings: AppSettings,
    now: Now,
) -> dict[str, bool]:
    lic = licenses.get(session, license_id, for_update=True)
    changes.change_budget(session, lic, data, actor=admin, tz=settings.timezone, now=now)
    return {"ok": True}


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
    org = refs.for_key(hot.organizations, key.organization_id, organization)
    terms = {org.id: hot.licenses(org.id)}

    def read() -> dict[str, Any]:
        if key.touch_due:
            with database.session(write=True) as touch:
                touch_api_key(touch, key.key_id, now)
        with database.single_read() as connection:
            return service.budget_states(
                connection, [org], settings.timezone, now, forecast=True, licenses=terms
            )[0]

    if key.touch_due or database.dialect_name != "sqlite":
        state = await run_in_threadpool(read)
    else:
        state = read()
    # Plain values in the documented shape (budgets.service.render_state, as the ingest
    # answer's budgets): validating them again on the way out would cost more than the read.
    return JSONResponse(state)


@router.post("/reservations", status_code=201)
def create_reservation(
    data: ReservationCreate, session: Session, key: IngestKey, settings: AppSettings, now: Now
) -> ReservationRead:
    org = refs.organization_for_key(session, key.organization_id, data.organization)
    amount = service.hold_amount_nano(session, data, now)
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
