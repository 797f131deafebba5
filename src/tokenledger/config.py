"""Settings, read once from the environment (or a .env file) into one object."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import tempfile
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tokenledger.ratelimit import Rate

DEFAULT_DATABASE_URL = "sqlite:///./data/tokenledger.db"
# An origin as a CSP source: a scheme and a host (a leading "*." allowed), an optional port;
# nothing that could end the directive or add another.
_ORIGIN = re.compile(r"https?://(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*(:\d{1,5})?")


class Settings(BaseSettings):
    """Everything an operator can set, each as TOKENLEDGER_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="TOKENLEDGER_", env_file=".env", extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
    secret_key: str = ""
    billing_timezone: str = "UTC"
    webhooks_allow_private: bool = False
    # Back-dated events older than this are refused; backfills within it are accepted.
    backfill_max_age_days: int = Field(default=400, ge=1)
    access_token_minutes: int = Field(default=12 * 60, ge=1)
    max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    reservation_ttl_seconds: int = Field(default=15 * 60, ge=1)
    # Events per repricing transaction: ingestion is served between two.
    reprice_chunk_events: int = Field(default=500, ge=1, le=10_000)
    # FULL survives power loss, NORMAL only a process crash; money wants FULL.
    sqlite_synchronous: str = "FULL"
    login_max_failures: int = Field(default=5, ge=1)
    login_window_seconds: int = Field(default=15 * 60, ge=1)
    cookie_secure: bool | None = None
    webhook_worker: bool = True
    # How long ingest keys, organizations and price overrides are kept in memory: a change
    # made by another process (a worker, the command line) is seen within this time.
    cache_seconds: float = Field(default=5, ge=0, le=300)
    # How long a worker holds a delivery it sends; after a crash, the wait before a resend.
    webhook_lease_seconds: int = Field(default=60, ge=2)
    # Requests per ingest key, e.g. "100/s" or "6000/m"; empty: no limit.
    ingest_rate_limit: str = ""
    # Proxies whose X-Forwarded-For / X-Forwarded-Proto are believed: comma-separated
    # addresses or networks. Empty: the socket's peer is the client, whatever it claims.
    trusted_proxies: str = ""
    # When set, /metrics answers only to "Authorization: Bearer <this token>".
    metrics_token: str = ""
    # /docs, /redoc and /openapi.json; an operator may turn them off in production.
    docs: bool = True
    # Tenant access: how long a portal link lasts unless its creator says (hours), and
    # the longest it may be asked to last.
    portal_link_hours: int = Field(default=24, ge=1)
    portal_link_max_hours: int = Field(default=24 * 30, ge=1)
    # Origins allowed to frame the portal (space- or comma-separated, e.g.
    # "https://app.example.com"); empty: none may (frame-ancestors 'none').
    portal_frame_ancestors: str = ""
    # Whether the portal and the tenant API show USD (provider cost, the USD budget) or
    # only credits and tokens: an operator who sells credits may keep its margin private.
    tenant_show_usd: bool = True
    # Provider reports: admin keys (never logged or shown), the periodic sync (minutes
    # between syncs, 0: off), how many recent UTC days it syncs, and the drift that alerts.
    anthropic_admin_key: SecretStr | None = None
    openai_admin_key: SecretStr | None = None
    provider_sync_interval_minutes: int = Field(default=0, ge=0, le=7 * 24 * 60)
    provider_sync_days: int = Field(default=3, ge=1, le=31)
    provider_drift_alert_percent: Decimal = Field(default=Decimal(2), ge=0, le=1000)
    # The gateway (/gateway/...) and the provider reports: each provider's key and
    # address. A provider without a key answers 503 at the gateway. The keys are secrets:
    # never logged, never echoed.
    anthropic_api_key: SecretStr = SecretStr("")
    anthropic_base_url: str = "https://api.anthropic.com"
    openai_api_key: SecretStr = SecretStr("")
    openai_base_url: str = "https://api.openai.com/v1"
    # Seconds: to connect to the provider, for its answer to begin (the first byte), and
    # between two events of a stream (idle). A whole call is bounded by gateway_max_call_seconds.
    gateway_connect_timeout: float = Field(default=10, gt=0)
    gateway_first_byte_timeout: float = Field(default=600, gt=0)
    gateway_idle_timeout: float = Field(default=300, gt=0)
    gateway_max_call_seconds: int = Field(default=3600, ge=1)

    @field_validator("billing_timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("ingest_rate_limit")
    @classmethod
    def _rate(cls, value: str) -> str:
        if value.strip():
            Rate.parse(value)
        return value.strip()

    @field_validator("sqlite_synchronous")
    @classmethod
    def _synchronous_level(cls, value: str) -> str:
        value = value.upper()
        if value not in {"FULL", "NORMAL", "EXTRA"}:
            raise ValueError("must be FULL, EXTRA or NORMAL")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _addresses(cls, value: str) -> str:
        for item in _split(value):
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"not an address or network: {item!r}") from exc
        return value

    @field_validator("portal_frame_ancestors")
    @classmethod
    def _origins(cls, value: str) -> str:
        for item in _split(value.replace(" ", ",")):
            if not _ORIGIN.fullmatch(item):
                raise ValueError(f"not an origin (scheme://host[:port]): {item!r}")
        return value

    @property
    def portal_frame_origins(self) -> list[str]:
        return _split(self.portal_frame_ancestors.replace(" ", ","))

    @property
    def trusted_proxy_list(self) -> list[str]:
        return _split(self.trusted_proxies)

    @property
    def timezone(self) -> ZoneInfo:
        return ZoneInfo(self.billing_timezone)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def signing_key(self) -> str:
        """The secret that signs tokens; for the embedded database one is kept beside it."""
        if self.secret_key:
            return self.secret_key
        path = self.sqlite_path()
        if path is None:
            raise RuntimeError("TOKENLEDGER_SECRET_KEY must be set when using PostgreSQL")
        key_file = path.parent / ".secret_key"
        if not key_file.exists():
            key_file.parent.mkdir(parents=True, exist_ok=True)
            # Written whole, private from the start (mkstemp: 0600), then linked into place:
            # a racing process never reads an empty or half-written key, and the first wins.
            fd, temporary = tempfile.mkstemp(dir=key_file.parent, prefix=".secret_key.")
            try:
                with os.fdopen(fd, "w") as handle:
                    handle.write(secrets.token_urlsafe(48))
                with contextlib.suppress(FileExistsError):
                    os.link(temporary, key_file)
            finally:
                os.unlink(temporary)
        return key_file.read_text().strip()

    def sqlite_path(self) -> Path | None:
        if not self.is_sqlite:
            return None
        raw = self.database_url.split(":///", 1)[1] if ":///" in self.database_url else ""
        if not raw or raw == ":memory:":
            return None
        return Path(raw)


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
