"""Typed dependencies: the request's unit of work and who is calling."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlalchemy.orm import Session as OrmSession
from starlette.concurrency import run_in_threadpool

from tokenledger.auth import service as auth_service
from tokenledger.auth.models import AdminUser
from tokenledger.auth.tokens import decode_token
from tokenledger.config import Settings
from tokenledger.db import MAX_ROW_ID, Clock, Database
from tokenledger.errors import DomainError
from tokenledger.hot import HotReads, KeyRef
from tokenledger.ratelimit import RateLimiter, retry_after

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SESSION_COOKIE = "tl_session"
CSRF_COOKIE = "tl_csrf"
CSRF_HEADER = "x-csrf-token"


def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[OrmSession]:
    """The request's one transaction: writes lock early, and it commits before responding."""
    with get_database(request).session(write=request.method not in SAFE_METHODS) as session:
        yield session


def now_of(request: Request) -> datetime:
    """The app's "now" (create_app's clock): routes and pages never read the clock themselves."""
    clock: Clock = request.app.state.clock
    return clock()


async def get_now(request: Request) -> datetime:
    # async: read on the event loop, not in a pool thread (POST /api/v1/usage takes it too).
    return now_of(request)


Session = Annotated[OrmSession, Depends(get_session, scope="function")]
AppSettings = Annotated[Settings, Depends(get_settings)]
# One instant per request (FastAPI caches a dependency within a request).
Now = Annotated[datetime, Depends(get_now)]
# An id in a path: one that no row can have is a 422, not a database error.
RowId = Annotated[int, Path(ge=1, le=MAX_ROW_ID)]


# The width of the address columns of login_attempts and audit_log.
CLIENT_ADDRESS_MAX = 64


def client_address(request: Request) -> str:
    # Cut to the column: a proxy may hand over a longer host (an IPv6 zone, a name), and on
    # PostgreSQL a longer value would fail the login or the audited write with a 500.
    host = request.client.host if request.client else "unknown"
    return host[:CLIENT_ADDRESS_MAX]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated admin user."""

    user_id: int
    email: str
    role: str
    csrf: str
    via_cookie: bool
    address: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def bearer_token(request: Request) -> str | None:
    """The token of an "Authorization: Bearer" header, if any."""
    return _bearer(request)


def _unauthenticated() -> DomainError:
    return DomainError(
        401, "not_authenticated", "sign in first", headers={"WWW-Authenticate": "Bearer"}
    )


def _same_secret(given: str, expected: str) -> bool:
    # Constant time; as bytes, because compare_digest refuses non-ASCII text.
    return hmac.compare_digest(given.encode(), expected.encode())


def current_principal(request: Request, session: Session, settings: AppSettings) -> Principal:
    return authenticate(request, session, settings, request.headers.get(CSRF_HEADER, ""))


def authenticate(
    request: Request, session: OrmSession, settings: Settings, csrf_given: str
) -> Principal:
    """The caller of a request; on a cookie session's write, csrf_given must be its token."""
    token = _bearer(request)
    via_cookie = False
    if token is None:
        token = request.cookies.get(SESSION_COOKIE)
        via_cookie = token is not None
    if token is None:
        raise _unauthenticated()
    if token.startswith(auth_service.API_KEY_PREFIX):
        raise DomainError(403, "ingest_key_not_allowed", "ingest keys cannot use admin routes")
    claims = decode_token(settings.signing_key(), token)
    if claims is None:
        raise _unauthenticated()
    user = session.get(AdminUser, claims.user_id)
    if user is None or user.disabled_at is not None or user.token_version != claims.version:
        raise _unauthenticated()
    if (
        via_cookie
        and request.method not in SAFE_METHODS
        and not _same_secret(csrf_given, claims.csrf)
    ):
        raise DomainError(403, "csrf_failed", "missing or wrong CSRF token")
    return Principal(
        user_id=user.id,
        email=user.email,
        role=user.role,
        csrf=claims.csrf,
        via_cookie=via_cookie,
        address=client_address(request),
    )


def require_viewer(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    return principal


def require_admin(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    if not principal.is_admin:
        raise DomainError(403, "admin_required", "this action needs the admin role")
    return principal


Viewer = Annotated[Principal, Depends(require_viewer)]
Admin = Annotated[Principal, Depends(require_admin)]


def require_admin_alone(request: Request, settings: AppSettings) -> Principal:
    """The admin of a route that runs its own write transactions (repricing, in chunks):
    checked in a read transaction that ends before the route runs, so that the request
    holds no transaction (on SQLite, not the one writer) meanwhile."""
    with get_database(request).session(write=False) as session:
        principal = authenticate(request, session, settings, request.headers.get(CSRF_HEADER, ""))
    return require_admin(principal)


# With AdminAlone a route has no request transaction: it opens its own from DatabaseDep.
AdminAlone = Annotated[Principal, Depends(require_admin_alone)]
DatabaseDep = Annotated[Database, Depends(get_database)]


@dataclass(frozen=True, slots=True)
class IngestPrincipal:
    """An ingest key: for one organization, or a service key for all (organization_id None).

    touch_due: its last use should be recorded (at most once a minute), by the caller.
    """

    key_id: int
    organization_id: int | None
    touch_due: bool = False


KEY_TOUCH_INTERVAL = timedelta(minutes=1)


def get_hot(request: Request) -> HotReads:
    hot: HotReads = request.app.state.hot
    return hot


def _live_key(request: Request, key: KeyRef | None, secret: str, now: datetime) -> IngestPrincipal:
    if key is None:
        raise DomainError(401, "invalid_api_key", "unknown or revoked API key")
    due = key.last_used_at is None or now - key.last_used_at > KEY_TOUCH_INTERVAL
    if due:
        get_hot(request).key_used(secret, key, now)
    return IngestPrincipal(key_id=key.id, organization_id=key.organization_id, touch_due=due)


def _limit_rate(request: Request, secret: str) -> None:
    # Before any query: a refused request costs no database work.
    limiter: RateLimiter | None = getattr(request.app.state, "ingest_limiter", None)
    if limiter is not None and (wait := limiter.take(secret)):
        raise DomainError(
            429,
            "rate_limited",
            f"more than {limiter.rate.requests} requests per {limiter.rate.per_seconds} s "
            "with this key",
            headers={"Retry-After": retry_after(wait)},
        )


def require_ingest_key(request: Request, session: Session, now: Now) -> IngestPrincipal:
    secret = _bearer(request)
    if secret is None:
        raise _unauthenticated()
    _limit_rate(request, secret)
    principal = _live_key(request, get_hot(request).api_key(secret), secret, now)
    if principal.touch_due:
        database = get_database(request)
        if request.method in SAFE_METHODS or database.dialect_name != "sqlite":
            # Its own short transaction: read-only requests stay read-only, and on
            # PostgreSQL the key's row lock is never held while the request takes the
            # organization's and license's (api_keys come last in db.py's lock order).
            database.run_write(
                lambda touch: auth_service.touch_api_key(touch, principal.key_id, now)
            )
        else:
            auth_service.touch_api_key(session, principal.key_id, now)
    return principal


async def require_usage_key(request: Request, now: Now) -> IngestPrincipal:
    """The ingest key of POST /api/v1/usage, from memory; its use is recorded by the write
    of the usage itself (touch_due), which holds no request session meanwhile."""
    return await key_principal(request, _bearer(request), now)


async def key_principal(request: Request, secret: str | None, now: datetime) -> IngestPrincipal:
    """An ingest key given in any header (POST /api/v1/usage: the bearer token; the
    gateway: x-api-key too), from memory; its use is recorded by the caller's write."""
    if secret is None:
        raise _unauthenticated()
    _limit_rate(request, secret)
    hot = get_hot(request)
    key = hot.cached_key(secret)
    if key is None:
        key = await run_in_threadpool(hot.api_key, secret)
    return _live_key(request, key, secret, now)


IngestKey = Annotated[IngestPrincipal, Depends(require_ingest_key)]
UsageKey = Annotated[IngestPrincipal, Depends(require_usage_key)]
