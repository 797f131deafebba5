"""Webhook endpoints: address checks, signatures, and the outbox worker with backoff."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import threading
import time
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import httpx
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from tokenledger.alerts.models import Webhook, WebhookDelivery
from tokenledger.alerts.schemas import WebhookCreate
from tokenledger.audit import service as audit
from tokenledger.db import MAX_ROW_ID, Database, utcnow
from tokenledger.errors import DomainError, not_found

log = logging.getLogger("tokenledger.webhooks")

SECRET_PREFIX = "whsec_"
# Sent, besides the Standard Webhooks headers, only to endpoints whose secret predates them.
LEGACY_SIGNATURE_HEADER = "X-Tokenledger-Signature"
RETRY_FOR = timedelta(hours=24)
FIRST_RETRY_SECONDS = 30
MAX_RETRY_SECONDS = 3600
REQUEST_TIMEOUT_SECONDS = 10
CLAIM_BATCH = 20
# A delivery is claimed for a lease; a worker killed mid-send leaves a lease that runs
# out, and the delivery is then sent again (same webhook-id) by any worker.
DEFAULT_LEASE_SECONDS = 60
_METADATA_HOSTS = {"metadata.google.internal", "metadata"}


def new_secret() -> str:
    """A Standard Webhooks secret: whsec_ and the base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _secret_key(secret: str) -> tuple[bytes, bool]:
    """The HMAC key of a secret, and whether it is of the URL-safe form made before.

    Secrets made before Standard Webhooks are whsec_ and 43 URL-safe base64 characters
    (no padding); their receivers still check the legacy header, which keys the HMAC with
    the whole secret text, so both are sent to them.
    """
    body = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(body, validate=True), False
    except binascii.Error:
        return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)), True


def webhook_id(delivery_id: int) -> str:
    """The id a receiver deduplicates on: one per delivery, the same on every retry."""
    return f"msg_tl_{delivery_id}"


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">."""
    key, _legacy = _secret_key(secret)
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signed_headers(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    headers = {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, message_id, timestamp, body),
    }
    if _secret_key(secret)[1]:
        mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
        headers[LEGACY_SIGNATURE_HEADER] = f"t={timestamp},v1={mac.hexdigest()}"
    return headers


def _forbidden_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        # An IPv4 address inside an IPv6 one (mapped, or 6to4) is judged as IPv4.
        address = address.ipv4_mapped or address.sixtofour or address
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or str(address) in {"169.254.169.254", "100.100.100.200", "fd00:ec2::254"}
        or (isinstance(address, ipaddress.IPv4Address) and address in _CGNAT)
    )


_CGNAT = ipaddress.ip_network("100.64.0.0/10")


def check_target(
    url: str, allow_private: bool
) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Refuse URLs that are not http(s), or that reach internal addresses (unless allowed).

    Returns the checked address to connect to (None when private targets are allowed).
    """
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port out of range
    except ValueError as exc:
        raise DomainError(422, "invalid_webhook_url", f"not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DomainError(422, "invalid_webhook_url", "the URL must be http(s)://host/...")
    if parts.username or parts.password:
        raise DomainError(422, "invalid_webhook_url", "credentials in the URL are not allowed")
    if allow_private:
        return None
    host = parts.hostname.lower().rstrip(".")
    if host in _METADATA_HOSTS or host == "localhost" or host.endswith(".localhost"):
        raise DomainError(422, "webhook_target_forbidden", f"{host} is an internal address")
    try:
        infos = socket.getaddrinfo(host, port or 443, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise DomainError(422, "webhook_host_unresolvable", f"cannot resolve {host}") from exc
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    for address in addresses:
        if _forbidden_address(address):
            raise DomainError(
                422,
                "webhook_target_forbidden",
                f"{host} resolves to {address}, an internal address; set "
                "TOKENLEDGER_WEBHOOKS_ALLOW_PRIVATE=true to allow it",
            )
    if not addresses:
        raise DomainError(422, "webhook_host_unresolvable", f"cannot resolve {host}")
    return addresses[0]


def pinned_request(
    url: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address | None
) -> tuple[str, dict[str, str], dict[str, str]]:
    """(url, extra headers, request extensions) that reach exactly the checked address.

    Connecting by name would resolve it again, and a hostile name server could then answer
    with an internal address (DNS rebinding). The connection goes to the checked address;
    Host and, for https, the TLS server name (and certificate check) keep the name.
    """
    if address is None:
        return url, {}, {}
    parts = urlsplit(url)
    host = parts.hostname or ""
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    pinned = parts._replace(netloc=netloc).geturl()
    host_header = host if parts.port is None else f"{host}:{parts.port}"
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    return pinned, {"Host": host_header}, extensions


def create_webhook(
    session: Session, data: WebhookCreate, *, actor: audit.Actor, allow_private: bool
) -> Webhook:
    """A new webhook, audited; a target refused (check_target) writes nothing."""
    check_target(data.url, allow_private)
    hook = Webhook(url=data.url, secret=new_secret(), description=data.description)
    session.add(hook)
    session.flush()
    audit.record_change(
        session,
        actor,
        "webhook.create",
        "webhook",
        hook.id,
        before=None,
        after={"url": hook.url, "description": hook.description},
    )
    return hook


def get_webhook(session: Session, webhook_id: int) -> Webhook:
    hook = session.get(Webhook, webhook_id) if 1 <= webhook_id <= MAX_ROW_ID else None
    if hook is None:
        raise not_found("webhook", webhook_id)
    return hook


def delete_webhook(session: Session, webhook_id: int, *, actor: audit.Actor) -> None:
    """Delete a webhook, audited."""
    hook = get_webhook(session, webhook_id)
    before = {"url": hook.url, "description": hook.description}
    session.delete(hook)
    session.flush()
    audit.record_change(
        session, actor, "webhook.delete", "webhook", webhook_id, before=before, after=None
    )


def send_test(hook: Webhook, allow_private: bool) -> tuple[int | None, str | None]:
    """Send a signed test event to a webhook now: (HTTP status or None, error or None)."""
    # The real clock, as for every delivery: the receiver checks the time against its own.
    payload = json.dumps(
        {"type": "webhook.test", "webhook_id": hook.id, "created_at": utcnow().isoformat()},
        sort_keys=True,
    )
    with httpx.Client(timeout=REQUEST_TIMEOUT_SECONDS, follow_redirects=False) as client:
        # A test is not a delivery of the outbox: an id of its own, never one of a delivery's.
        message_id = f"msg_tl_test_{secrets.token_hex(8)}"
        return _post(client, hook.url, hook.secret, message_id, payload, allow_private)


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2 ** (attempts - 1)))


def _claim(database: Database, now: datetime, lease_seconds: float) -> int | None:
    """Lease the oldest due delivery that no live worker holds; None when there is none."""
    with database.session(write=True) as session:
        query = (
            select(WebhookDelivery)
            .where(
                WebhookDelivery.status == "pending",
                WebhookDelivery.next_attempt_at <= now,
                or_(WebhookDelivery.locked_until.is_(None), WebhookDelivery.locked_until < now),
            )
            .order_by(WebhookDelivery.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        delivery = session.scalars(query).first()
        if delivery is None:
            return None
        delivery.locked_until = now + timedelta(seconds=lease_seconds)
        return delivery.id


def deliver_due(
    database: Database,
    client: httpx.Client,
    allow_private: bool,
    limit: int = CLAIM_BATCH,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
) -> int:
    """Send due deliveries once each, up to `limit`; returns how many were attempted.

    Each is leased on its own, for longer than one request may take: a worker that dies
    holds at most one delivery, until its lease runs out.
    """
    attempted = 0
    while attempted < limit:
        delivery_id = _claim(database, utcnow(), lease_seconds)
        if delivery_id is None:
            break
        attempted += 1
        _attempt(database, client, allow_private, delivery_id)
    return attempted


def _attempt(
    database: Database, client: httpx.Client, allow_private: bool, delivery_id: int
) -> None:
    with database.session(write=False) as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        hook = session.get(Webhook, delivery.webhook_id) if delivery else None
        if delivery is None or hook is None:
            return
        url, secret, payload = hook.url, hook.secret, delivery.payload
        attempts, created_at = delivery.attempts + 1, delivery.created_at
    status_code, error = _post(client, url, secret, webhook_id(delivery_id), payload, allow_private)
    with database.session(write=True) as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        if delivery is None:
            return
        done = utcnow()
        delivery.attempts = attempts
        delivery.last_status_code = status_code
        delivery.last_error = error
        delivery.locked_until = None
        if status_code is not None and 200 <= status_code < 300:
            delivery.status = "delivered"
            delivery.delivered_at = done
        elif done - created_at >= RETRY_FOR:
            delivery.status = "failed"
        else:
            delivery.next_attempt_at = done + backoff(attempts)


def _post(
    client: httpx.Client,
    url: str,
    secret: str,
    message_id: str,
    payload: str,
    allow_private: bool,
) -> tuple[int | None, str | None]:
    try:
        # Checked again at delivery: a name may resolve elsewhere than when it was saved.
        address = check_target(url, allow_private)
        target, pin_headers, extensions = pinned_request(url, address)
        body = payload.encode()
        headers = {
            "Content-Type": "application/json",
            **signed_headers(secret, message_id, int(time.time()), body),
            "User-Agent": "tokenledger-webhooks",
            **pin_headers,
        }
        response = client.post(target, content=body, headers=headers, extensions=extensions)
        error = None if response.is_success else f"HTTP {response.status_code}"
        return response.status_code, error
    except DomainError as exc:
        return None, exc.message[:500]
    except Exception as exc:
        # Whatever one endpoint does (an HTTP error, a host name httpx cannot encode), it is
        # a failed attempt of that delivery: it must not stall the deliveries behind it.
        return None, f"{type(exc).__name__}: {exc}"[:500]


class WebhookWorker:
    """A background thread that drains the outbox; every worker process may run one.

    It keeps the real clock, not the app's (create_app's clock): retries, backoff and
    leases are waits in real time, and receivers check webhook-timestamp against theirs.
    """

    def __init__(
        self,
        database: Database,
        allow_private: bool,
        interval: float = 2.0,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> None:
        self.database = database
        self.allow_private = allow_private
        self.interval = interval
        self.lease_seconds = lease_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhook-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        # A request never outlives its lease: another worker would send it meanwhile.
        timeout = min(REQUEST_TIMEOUT_SECONDS, self.lease_seconds / 2)
        with httpx.Client(timeout=timeout, follow_redirects=False) as client:
            while not self._stop.is_set():
                try:
                    sent = deliver_due(
                        self.database, client, self.allow_private, lease_seconds=self.lease_seconds
                    )
                except Exception:
                    log.exception("webhook delivery round failed")
                    sent = 0
                if not sent:
                    self._stop.wait(self.interval)
