"""Budget state of organizations, and reservations (holds) against what remains.

Every figure comes from maintained rows (license credits, per-license monthly spend,
active holds), never from a scan of events.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol, TypeVar, cast

from sqlalchemy import (
    String,
    Table,
    bindparam,
    case,
    func,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from tokenledger import db
from tokenledger.budgets.models import Reservation
from tokenledger.budgets.schemas import ReservationCreate
from tokenledger.errors import DomainError, not_found
from tokenledger.licenses.models import License, LicenseTerms
from tokenledger.licenses.service import terms_in_force
from tokenledger.money import (
    INT64_MAX,
    credits_for_cost,
    credits_value_nano,
    divide_half_even,
    format_credits,
    format_usd,
    usd_to_nano,
)
from tokenledger.organizations import service as organizations
from tokenledger.organizations.models import Organization
from tokenledger.periods import month_bounds, month_of
from tokenledger.pricing.engine import TokenUsage
from tokenledger.pricing.overrides import price_book
from tokenledger.usage.models import LicenseUsage, UsageDaily

FORECAST_DAYS = 7


# Statuses of holds written out in the SQL, not bound: SQLite prepares a statement again
# at every execution when a bound value is compared with a column that a partial index's
# condition names (reservations.status: ix_reservations_gateway_held), since the value
# could change the plan. That was most of the budget check's statement (about 150 us).
# (As literal columns: literal(..., literal_execute=True) cannot run as executemany.)
HELD = literal_column("'held'", String)
SETTLED = literal_column("'settled'", String)


def limit_state(committed: int, limit: int | None, warn_percent: int) -> str:
    """One limit's state: unlimited, ok, warning (from the warning percent) or exhausted."""
    if limit is None:
        return "unlimited"
    if committed >= limit:
        return "exhausted"
    if committed * 100 >= limit * warn_percent:
        return "warning"
    return "ok"


Terms = TypeVar("Terms", bound=LicenseTerms)


@dataclass(slots=True)
class Figures:
    """What a license has used, spent and holds, in integer units."""

    license: LicenseTerms
    period: str
    credits_used_micro: int
    spent_nano: int
    reserved_nano: int

    @property
    def credit_limit(self) -> int | None:
        return self.license.credits_total_micro or None

    @property
    def usd_limit(self) -> int | None:
        return self.license.token_budget_nano or None

    @property
    def reserved_credits_micro(self) -> int:
        return credits_for_cost(self.reserved_nano, self.license.cost_per_credit_nano)

    @property
    def credits_committed(self) -> int:
        return self.credits_used_micro + self.reserved_credits_micro

    @property
    def usd_committed(self) -> int:
        return self.spent_nano + self.reserved_nano

    def state(self) -> str:
        warn = self.license.budget_warning_percent
        states = {
            limit_state(self.credits_committed, self.credit_limit, warn),
            limit_state(self.usd_committed, self.usd_limit, warn),
        }
        for state in ("exhausted", "warning"):
            if state in states:
                return state
        return "ok"

    def remaining_nano(self) -> int | None:
        """USD that may still be committed: the tighter of the budget and the credits."""
        candidates = []
        if self.usd_limit is not None:
            candidates.append(self.usd_limit - self.usd_committed)
        if self.credit_limit is not None:
            credits_left = self.credit_limit - self.credits_committed
            candidates.append(credits_value_nano(credits_left, self.license.cost_per_credit_nano))
        return max(0, min(candidates)) if candidates else None


# Where the figures are read: a Session (in a unit of work), a bare Connection, or a
# SingleRead (the budget check and the tenant summary, which need no ORM).
Reader = db.Reader


def window_start(tz: Any, now: datetime) -> str:
    """The first billing day of the forecast window (today is its last)."""
    # Calendar days, not 24-hour steps, which miscount around a daylight-saving change.
    return (now.astimezone(tz).date() - timedelta(days=FORECAST_DAYS - 1)).isoformat()


def _window_cost(organization_id: Any) -> Any:
    """An organization's cost over the forecast window (from :first_day), as a subquery."""
    return (
        select(func.sum(UsageDaily.cost_nano))
        .where(
            UsageDaily.organization_id == organization_id,
            UsageDaily.day >= bindparam("first_day"),
        )
        .scalar_subquery()
    )


def _figures_query(one: bool, window: bool) -> Any:
    """Per license (:license_id, or each of :ids): credits used, this month's spend
    (:month), the spend of its whole term, active holds (at :now), and with window the
    organization's recent cost (from :first_day)."""
    columns = [
        License.id,
        License.credits_used_micro,
        select(LicenseUsage.cost_nano)
        .where(LicenseUsage.license_id == License.id, LicenseUsage.year_month == bindparam("month"))
        .scalar_subquery(),
        select(func.sum(LicenseUsage.cost_nano))
        .where(LicenseUsage.license_id == License.id)
        .scalar_subquery(),
        select(func.sum(Reservation.amount_nano))
        .where(
            Reservation.license_id == License.id,
            Reservation.status == HELD,
            Reservation.expires_at > bindparam("now"),
        )
        .scalar_subquery(),
    ]
    if window:
        columns.append(_window_cost(License.organization_id))
    wanted = (
        License.id == bindparam("license_id")
        if one
        else License.id.in_(bindparam("ids", expanding=True))
    )
    return select(*columns).where(wanted)


# Built once: every read of figures is one of these statements (for one license or for
# several; with the forecast window or without), compiled once per database dialect
# (SQLAlchemy's statement cache) and run as one round trip. On SQLite all go straight to
# the driver (db.driver_read): from a SingleRead (the budget check's, one license: no list
# to write out) and in the writer's group (db.read_rows).
_FIGURES = {
    (one, window): db.driver_read(_figures_query(one, window))
    for one in (True, False)
    for window in (True, False)
}


def figures_and_windows(
    reader: Reader, licenses: Sequence[LicenseTerms], tz: Any, now: datetime, window: bool = True
) -> dict[int, tuple[Figures, int]]:
    """Each license's figures now, and its organization's cost over the forecast window
    (0 without window), in one statement."""
    if not licenses:
        return {}
    month = month_of(now, tz)
    params: dict[str, Any] = {"month": month, "now": now}
    one = len(licenses) == 1
    if one:
        params["license_id"] = licenses[0].id
    else:
        params["ids"] = [lic.id for lic in licenses]
    if window:
        params["first_day"] = window_start(tz, now)
    rows = {row[0]: row for row in _rows(reader, _FIGURES[one, window], params)}
    result = {}
    for lic in licenses:
        row = rows.get(lic.id)
        if row is None:
            continue
        is_monthly = lic.budget_period == "monthly"
        # A monthly budget counts this month's spend, a license-term budget all its months.
        spent = row[2] if is_monthly else row[3]
        result[lic.id] = (
            Figures(
                license=lic,
                period=month if is_monthly else "license",
                credits_used_micro=int(row[1]),
                spent_nano=int(spent or 0),
                reserved_nano=int(row[4] or 0),
            ),
            int(row[5] or 0) if window else 0,
        )
    return result


def figures_for(
    reader: Reader, licenses: Sequence[LicenseTerms], tz: Any, now: datetime
) -> dict[int, Figures]:
    """Figures for several licenses, in one statement."""
    return {
        license_id: fig
        for license_id, (fig, _window) in figures_and_windows(
            reader, licenses, tz, now, window=False
        ).items()
    }


def months_figures(
    session: Session, wanted: dict[int, tuple[Figures, list[str]]]
) -> dict[int, dict[str, Figures]]:
    """A monthly budget's figures for given (earlier) months, from its figures now: their
    spend, no holds, for several licenses in one query."""
    wanted = {lid: (fig, months) for lid, (fig, months) in wanted.items() if months}
    if not wanted:
        return {}
    all_months = sorted({month for _fig, months in wanted.values() for month in months})
    spent = {
        (license_id, month): cost
        for license_id, month, cost in session.execute(
            select(LicenseUsage.license_id, LicenseUsage.year_month, LicenseUsage.cost_nano).where(
                LicenseUsage.license_id.in_(sorted(wanted)),
                LicenseUsage.year_month.in_(all_months),
            )
        )
    }
    return {
        license_id: {
            month: Figures(
                license=current.license,
                period=month,
                credits_used_micro=current.credits_used_micro,
                spent_nano=int(spent.get((license_id, month)) or 0),
                reserved_nano=0,
            )
            for month in months
        }
        for license_id, (current, months) in wanted.items()
    }


class OrgLike(Protocol):
    @property
    def id(self) -> int: ...

    @property
    def slug(self) -> str: ...


def governing(licenses: Iterable[Terms], now: datetime) -> tuple[Terms | None, bool]:
    """The governing license: the newest active license in force now, or (None, suspended?)
    when there is none (suspended: a suspended license stands in the way).

    `licenses`: an organization's licenses, in any order, of any status.
    """
    suspended = False
    for lic in sorted(licenses, key=lambda lic: -lic.id):
        if lic.status != "active":
            suspended = suspended or lic.status == "suspended"
            continue
        if lic.valid_from > now:
            continue
        if lic.valid_until is None or now < lic.valid_until:
            return lic, False
    return None, suspended


def budget_states(
    reader: Reader,
    orgs: Sequence[OrgLike],
    tz: Any,
    now: datetime,
    forecast: bool = False,
    licenses: Mapping[int, Sequence[LicenseTerms]] | None = None,
) -> list[dict[str, Any]]:
    """The budget state of each organization, as the API renders it.

    `licenses`: each organization's active and suspended licenses, newest first, when the
    caller has them (the budget check, from memory); else they are read here.
    """
    if licenses is None:
        licenses = terms_in_force(reader, [org.id for org in orgs]) if orgs else {}
    in_force = {org.id: governing(licenses.get(org.id, ()), now) for org in orgs}
    found = figures_and_windows(
        reader, [lic for lic, _ in in_force.values() if lic is not None], tz, now, forecast
    )
    states = []
    for org in orgs:
        lic, suspended = in_force[org.id]
        fig, window = found.get(lic.id, (None, 0)) if lic is not None else (None, 0)
        states.append(render_state(org, fig, suspended))
        if forecast and fig is not None:
            states[-1]["forecast"] = burn_forecast(fig, window, tz, now)
    return states


def render_state(org: OrgLike, fig: Figures | None, suspended: bool) -> dict[str, Any]:
    """An organization's budget state as the API renders it, from figures in hand."""
    base: dict[str, Any] = {
        "organization": org.slug,
        "organization_id": org.id,
        "license_id": None,
        "enforcement": None,
        "budget_period": None,
        "period": None,
        "credits_total": None,
        "credits_used": None,
        "credits_reserved": None,
        "credits_remaining": None,
        "token_budget_usd": None,
        "spent_usd": None,
        "reserved_usd": None,
        "remaining_usd": None,
        "forecast": None,
    }
    if fig is None:
        state = "suspended" if suspended else "no_license"
        return {**base, "state": state, "allowed": state == "no_license"}
    lic = fig.license
    state = fig.state()
    credits_remaining = (
        max(0, fig.credit_limit - fig.credits_committed) if fig.credit_limit is not None else None
    )
    usd_remaining = max(0, fig.usd_limit - fig.usd_committed) if fig.usd_limit is not None else None
    return {
        **base,
        "state": state,
        "allowed": not (state == "exhausted" and lic.enforcement == "hard"),
        "license_id": lic.id,
        "enforcement": lic.enforcement,
        "budget_period": lic.budget_period,
        "period": fig.period,
        "credits_total": format_credits(lic.credits_total_micro),
        "credits_used": format_credits(fig.credits_used_micro),
        "credits_reserved": format_credits(fig.reserved_credits_micro),
        "credits_remaining": format_credits(credits_remaining),
        "token_budget_usd": format_usd(lic.token_budget_nano),
        "spent_usd": format_usd(fig.spent_nano),
        "reserved_usd": format_usd(fig.reserved_nano),
        "remaining_usd": format_usd(usd_remaining),
    }


# Built once, on SQLite read from the driver (every group commit that reaches a budget
# reads it).
_RECENT_COST = db.driver_read(
    select(Organization.id, _window_cost(Organization.id)).where(
        Organization.id.in_(bindparam("orgs", expanding=True))
    )
)


def _rows(reader: Reader, statement: Any, params: dict[str, Any]) -> list[Any]:
    """A read statement's rows: in a session, its pending changes flushed first (what the
    session's own execute would autoflush), then as db.read_rows reads (on SQLite straight
    to the driver); a SingleRead or a bare Connection runs it as it is."""
    if isinstance(reader, Session):
        reader.flush()
        return db.read_rows(reader, statement, params)
    return list(reader.execute(statement, params))


def recent_cost(reader: Reader, org_ids: list[int], tz: Any, now: datetime) -> dict[int, int]:
    """Each organization's cost over the forecast window, in one query."""
    if not org_ids:
        return {}
    rows = _rows(
        reader, _RECENT_COST, {"orgs": sorted(set(org_ids)), "first_day": window_start(tz, now)}
    )
    return {org_id: int(cost or 0) for org_id, cost in rows}


def burn_forecast(fig: Figures, window_cost_nano: int, tz: Any, now: datetime) -> dict[str, Any]:
    """At the last 7 days' pace: USD per day, when credits and budget run out within the
    period each is counted in, and what each comes to when its period ends.

    A monthly budget resets at the month's end and credits end with the license: neither
    "runs out" after that, so a date past the period's end is no date (None), and the
    projection at the period's end says where the pace leads instead.
    """
    per_day = Decimal(window_cost_nano) / FORECAST_DAYS
    budget_end = _budget_period_end(fig, tz)
    credits_end = fig.license.valid_until
    result: dict[str, Any] = {
        "window_days": FORECAST_DAYS,
        "usd_per_day": format_usd(int(per_day)),
        "credits_exhausted_at": None,
        "budget_exhausted_at": None,
        "budget_exhausted_before_period_end": False,
        # The end of the period the budget is counted in (None: open-ended), and the
        # committed spend at that instant at this pace.
        "period_end": budget_end.isoformat() if budget_end else None,
        "projected_spent_usd": None,
        # The end of the license (credits count over its whole term), and credits used then.
        "credits_period_end": credits_end.isoformat() if credits_end else None,
        "projected_credits_used": None,
    }
    if budget_end is not None and fig.usd_limit is not None:
        result["projected_spent_usd"] = format_usd(
            fig.usd_committed + _cost_until(window_cost_nano, now, budget_end)
        )
    if credits_end is not None and fig.credit_limit is not None:
        cost = _cost_until(window_cost_nano, now, credits_end)
        result["projected_credits_used"] = format_credits(
            fig.credits_committed + credits_for_cost(cost, fig.license.cost_per_credit_nano)
        )
    if per_day <= 0:
        return result
    if fig.credit_limit is not None:
        left_nano = (fig.credit_limit - fig.credits_committed) * fig.license.cost_per_credit_nano
        days = max(Decimal(0), Decimal(left_nano) / 10**6 / per_day)
        credits_at = _after(now, days)
        if credits_end is None or credits_at < credits_end:
            result["credits_exhausted_at"] = credits_at.isoformat()
    at = _budget_runs_out_at(fig, window_cost_nano, now)
    if at is not None and (budget_end is None or at < budget_end):
        result["budget_exhausted_at"] = at.isoformat()
        result["budget_exhausted_before_period_end"] = budget_end is not None
    return result


def _cost_until(window_cost_nano: int, now: datetime, end: datetime) -> int:
    """The cost from now until end at the window's pace, in nano-USD (0 once end is past)."""
    microseconds = max(0, (end - now) // timedelta(microseconds=1))
    return divide_half_even(window_cost_nano * microseconds, FORECAST_DAYS * _DAY_MICROSECONDS)


_DAY_MICROSECONDS = 86_400 * 10**6


def exhausts_before_period_end(fig: Figures, window_cost_nano: int, tz: Any, now: datetime) -> bool:
    """burn_forecast's budget_exhausted_before_period_end alone: what the forecast alert
    asks of every license a group of usage touched (the whole forecast is rendered only
    for the few it fires for)."""
    at = _budget_runs_out_at(fig, window_cost_nano, now)
    end = _budget_period_end(fig, tz)
    return at is not None and end is not None and at < end


def _budget_runs_out_at(fig: Figures, window_cost_nano: int, now: datetime) -> datetime | None:
    """When the USD budget runs out at the last 7 days' pace; None without pace or budget."""
    if fig.usd_limit is None or window_cost_nano <= 0:
        return None
    per_day = Decimal(window_cost_nano) / FORECAST_DAYS
    days = max(Decimal(0), Decimal(fig.usd_limit - fig.usd_committed) / per_day)
    return _after(now, days)


def _budget_period_end(fig: Figures, tz: Any) -> datetime | None:
    """When the period the USD budget is counted in ends: the month's end for a monthly
    budget, the license's for a license-term one (None when open-ended)."""
    if fig.license.budget_period == "monthly":
        return month_bounds(fig.period, tz)[1]
    return fig.license.valid_until


def _after(now: datetime, days: Decimal) -> datetime:
    # A whole number of microseconds (timedelta's unit), capped at a century.
    microseconds = int(min(days, Decimal(36500)) * _DAY_MICROSECONDS)
    return now + timedelta(microseconds=microseconds)


def hold_amount_nano(session: Session, data: ReservationCreate, now: datetime) -> int:
    """What a hold reserves: the amount given, or the model's price of the most tokens."""
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


def create_reservation(
    session: Session, org: Organization, amount_nano: int, ttl_seconds: int, tz: Any, now: datetime
) -> tuple[Reservation, dict[str, Any]]:
    """Hold an amount (hold's rules) and the organization's budget state after it."""
    reservation = hold(session, org.id, amount_nano, ttl_seconds, tz, now)
    state = budget_states(session, [org], tz, now)[0]
    return reservation, state


def hold(
    session: Session,
    organization_id: int,
    amount_nano: int | None,
    ttl_seconds: int,
    tz: Any,
    now: datetime,
    *,
    kind: str | None = None,
    provider: str | None = None,
    model: str | None = None,
) -> Reservation:
    """Hold an amount; under hard enforcement only if it fits in what remains.

    The organization's license rows are locked first (PostgreSQL: FOR UPDATE, which every
    writer of usage takes too; SQLite: the write transaction excludes other writers), so
    concurrent holds are checked one after another and can never together exceed what
    remains. amount_nano None: a cost that cannot be bounded (an unknown model), refused
    under hard enforcement and held as 0 otherwise.
    """
    organizations.lock(session, [organization_id])
    licenses = list(
        session.scalars(
            select(License)
            .where(
                License.organization_id == organization_id,
                License.status.in_(("active", "suspended")),
            )
            .order_by(License.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).all()
    )
    lic, suspended = governing(licenses, now)
    fig = figures_for(session, [lic], tz, now)[lic.id] if lic is not None else None
    refusal = hold_refusal(lic, suspended, fig, amount_nano, model)
    if refusal is not None:
        raise refusal
    reservation = Reservation(
        id="res_" + uuid.uuid4().hex,
        organization_id=organization_id,
        license_id=lic.id if lic else None,
        amount_nano=amount_nano or 0,
        status="held",
        created_at=now,
        expires_at=now + timedelta(seconds=ttl_seconds),
        kind=kind,
        provider=provider,
        model=model,
    )
    session.add(reservation)
    session.flush()
    return reservation


def hold_refusal(
    lic: LicenseTerms | None,
    suspended: bool,
    fig: Figures | None,
    amount_nano: int | None,
    model: str | None,
) -> DomainError | None:
    """Why a hold of amount_nano may not be placed, given the governing license and its
    figures now (holds placed before it included), or None: it may."""
    if lic is None:
        if suspended:
            return DomainError(402, "license_suspended", "the organization's license is suspended")
        return None
    if lic.enforcement == "hard" and amount_nano is None:
        return DomainError(
            402,
            "unbounded_cost",
            f"the cost of {model!r} cannot be bounded (no price), and the budget is hard",
        )
    assert fig is not None
    if fig.reserved_nano + (amount_nano or 0) > INT64_MAX:
        # Soft enforcement holds past what remains; their sum still has to fit.
        return DomainError(
            409,
            "ledger_limit",
            f"the license's holds would pass {INT64_MAX} nano-USD, the largest sum the "
            "ledger keeps: release some first",
        )
    remaining = fig.remaining_nano()
    # Once exhausted nothing more is held, not even an empty hold.
    exhausted = fig.state() == "exhausted"
    if (
        lic.enforcement == "hard"
        and remaining is not None
        and (exhausted or (amount_nano or 0) > remaining)
    ):
        return DomainError(
            402,
            "insufficient_budget",
            f"the hold of {format_usd(amount_nano or 0)} USD exceeds what remains "
            f"({format_usd(remaining)} USD)",
            details={"remaining_usd": format_usd(remaining)},
        )
    return None


@dataclass(slots=True)
class NewHold:
    """A hold to place in a group's transaction (a call through the gateway)."""

    id: str
    organization_id: int
    amount_nano: int | None  # None: the cost cannot be bounded (hold_refusal)
    created_at: datetime
    expires_at: datetime
    provider: str
    model: str
    kind: str = "gateway"


_RESERVATIONS = cast(Table, Reservation.__table__)
_INSERT_HOLD = _RESERVATIONS.insert()
_RELEASE = (
    update(_RESERVATIONS)
    .where(
        _RESERVATIONS.c.id == bindparam("rid"),
        _RESERVATIONS.c.organization_id == bindparam("org"),
        _RESERVATIONS.c.status == HELD,
    )
    .values(
        status=case((_RESERVATIONS.c.expires_at <= bindparam("now"), "expired"), else_="released"),
        closed_at=bindparam("now"),
    )
)


def place_holds(
    session: Session,
    holds: Sequence[NewHold],
    in_force: Mapping[int, tuple[LicenseTerms | None, bool]],
    figures: Mapping[int, Figures],
) -> list[DomainError | None]:
    """Place holds one after another, each checked as `hold` checks it against what remains
    after the ones before it; each one's refusal or None, in order.

    The caller has locked the organizations and their licenses (db.py's lock order) and
    read `figures` in this transaction: the governing license of each organization
    (`in_force`: governing's answer) with its figures, which grow by each hold placed.
    """
    outcomes: list[DomainError | None] = []
    rows = []
    for new in holds:
        lic, suspended = in_force[new.organization_id]
        fig = figures.get(lic.id) if lic is not None else None
        refusal = hold_refusal(lic, suspended, fig, new.amount_nano, new.model)
        outcomes.append(refusal)
        if refusal is not None:
            continue
        amount = new.amount_nano or 0
        if fig is not None:
            fig.reserved_nano += amount
        rows.append(
            {
                "id": new.id,
                "organization_id": new.organization_id,
                "license_id": lic.id if lic is not None else None,
                "amount_nano": amount,
                "status": "held",
                "created_at": new.created_at,
                "expires_at": new.expires_at,
                "kind": new.kind,
                "provider": new.provider,
                "model": new.model,
            }
        )
    if rows:
        session.connection().execute(_INSERT_HOLD, rows)
    return outcomes


def release_holds(session: Session, holds: Sequence[tuple[str, int]], now: datetime) -> None:
    """Release held reservations (id, organization id) whose call brought no usage; one
    already settled, released or expired stays as it is. The caller has locked their
    organizations."""
    if holds:
        session.connection().execute(
            _RELEASE, [{"rid": rid, "org": org, "now": now} for rid, org in sorted(holds)]
        )


def interrupted_calls(
    session: Session, now: datetime, organization_id: int | None = None, limit: int = 100
) -> list[Reservation]:
    """Gateway holds never settled nor released, whose call has outlived its longest
    possible duration (the hold's expiry): calls whose gateway process was killed mid-call.
    Newest first."""
    query = (
        select(Reservation)
        .where(
            # Both written out: the partial index of gateway holds applies as planned.
            Reservation.status == HELD,
            Reservation.kind == literal_column("'gateway'", String),
            Reservation.expires_at <= now,
        )
        .order_by(Reservation.created_at.desc())
        .limit(limit)
    )
    if organization_id is not None:
        query = query.where(Reservation.organization_id == organization_id)
    return list(session.scalars(query).all())


def release_reservation(
    session: Session, reservation_id: str, org_id: int | None, now: datetime
) -> Reservation:
    # Its organization first (db.py's lock order), then the hold, as ingestion settles it.
    owner = session.scalar(
        select(Reservation.organization_id).where(Reservation.id == reservation_id)
    )
    if owner is not None:
        organizations.lock(session, [owner])
    query = (
        select(Reservation)
        .where(Reservation.id == reservation_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    reservation = session.scalar(query)
    if reservation is None or (org_id is not None and reservation.organization_id != org_id):
        raise not_found("reservation", reservation_id)
    if reservation.status == "held":
        reservation.status = "expired" if reservation.expires_at <= now else "released"
        reservation.closed_at = now
    return reservation


# Built once (a group settles with it every time): each hold its events name, by id.
_SETTLE = (
    update(_RESERVATIONS)
    .where(
        _RESERVATIONS.c.id == bindparam("rid"),
        _RESERVATIONS.c.organization_id == bindparam("org"),
        # Not an IN list: SQLAlchemy cannot run an expanding parameter as executemany.
        or_(_RESERVATIONS.c.status == HELD, _RESERVATIONS.c.status == SETTLED),
    )
    .values(
        status="settled",
        closed_at=bindparam("now"),
        settled_cost_nano=func.coalesce(_RESERVATIONS.c.settled_cost_nano, 0) + bindparam("cost"),
    )
)


def settle_reservations(session: Session, rows: list[dict[str, Any]], now: datetime) -> None:
    """Usage events that carry a reservation_id settle it: actual cost replaces the hold."""
    costs: dict[tuple[str, int], int] = defaultdict(int)
    for row in rows:
        if row["reservation_id"]:
            costs[(row["reservation_id"], row["organization_id"])] += row["cost_nano"] or 0
    if not costs:
        return
    session.connection().execute(
        _SETTLE,
        [
            {"rid": rid, "org": org, "cost": cost, "now": now}
            for (rid, org), cost in sorted(costs.items())
        ],
    )
