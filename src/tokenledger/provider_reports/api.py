"""Admin routes of provider bills: the comparison, provider accounts and their mapping, syncs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from tokenledger.db import MAX_ROW_ID
from tokenledger.deps import Admin, Session, Viewer
from tokenledger.provider_reports import service
from tokenledger.provider_reports.schemas import ComparisonRead, comparison_json
from tokenledger.schemas import PRINTABLE, RANGE_RULE, Day, InputModel

router = APIRouter(prefix="/api/provider-reports", tags=["provider reports"])

Provider = Annotated[str, Query(pattern="^(anthropic|openai)$")]


@router.get("/comparison", response_model=ComparisonRead)
def comparison(
    session: Session,
    _viewer: Viewer,
    provider: Provider,
    from_: Annotated[Day, Query(alias="from")],
    to: Annotated[Day, Query(description=f"last day, inclusive; from 'from' on ({RANGE_RULE})")],
    organization_id: Annotated[int | None, Query(ge=1, le=MAX_ROW_ID)] = None,
) -> Response:
    """Per UTC day and model: the provider's tokens and cost against the ledger's."""
    result = service.compare(session, provider, from_, to, organization_id)
    # ComparisonRead's shape, written out directly (its validation doubled a year's time).
    return Response(comparison_json(result), media_type="application/json")


class AccountRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    provider: str
    kind: str
    external_id: str
    # None: unassigned (its usage belongs to no organization).
    organization_id: int | None
    first_seen_day: str | None
    last_seen_day: str | None


class AccountMapping(InputModel):
    organization_id: int | None = Field(ge=1, le=MAX_ROW_ID)


AccountKind = Annotated[str, Path(pattern="^(api_key|workspace|project)$")]
ExternalId = Annotated[str, Path(min_length=1, max_length=128, pattern=PRINTABLE)]


@router.get("/accounts")
def list_accounts(
    session: Session,
    _viewer: Viewer,
    provider: Annotated[str | None, Query(pattern="^(anthropic|openai)$")] = None,
) -> list[AccountRead]:
    """The provider API keys, workspaces and projects seen or mapped, with their organization."""
    return [AccountRead.model_validate(row) for row in service.list_accounts(session, provider)]


@router.put("/accounts/{provider}/{kind}/{external_id}")
def map_account(
    provider: Annotated[str, Path(pattern="^(anthropic|openai)$")],
    kind: AccountKind,
    external_id: ExternalId,
    data: AccountMapping,
    session: Session,
    admin: Admin,
) -> AccountRead:
    """Map a provider account to an organization (organization_id null: unassigned)."""
    account = service.map_account(session, provider, kind, external_id, data.organization_id, admin)
    return AccountRead.model_validate(account)


class SyncRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    provider: str
    first_day: str
    last_day: str
    status: str
    actor: str
    row_count: int
    error: str | None
    started_at: datetime
    finished_at: datetime | None


@router.get("/syncs")
def list_syncs(
    session: Session,
    _viewer: Viewer,
    provider: Annotated[str | None, Query(pattern="^(anthropic|openai)$")] = None,
) -> list[SyncRead]:
    """The latest syncs, newest first, with the reason of each failure."""
    return [SyncRead.model_validate(row) for row in service.recent_syncs(session, provider)]
