"""Webhooks: admin CRUD, refused internal targets, signed delivery, retries, durability."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import datetime, timedelta
from decimal import Decimal

import httpx
import pytest
import standardwebhooks
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from tests.conftest import Received, event, ingest, make_settings
from tokenledger.alerts.models import Alert, Webhook, WebhookDelivery
from tokenledger.alerts.webhooks import deliver_due, new_secret
from tokenledger.app import create_app
from tokenledger.db import Database, utcnow

PUBLIC_URL = "https://93.184.215.14/hooks/tokenledger"  # an IP literal: no DNS needed


def _create(client: TestClient, url: str, headers: dict[str, str], **extra: str):  # type: ignore[no-untyped-def]
    return client.post("/api/webhooks", json={"url": url, **extra}, headers=headers)


def _deliveries(database: Database) -> list[WebhookDelivery]:
    with database.session(write=False) as session:
        return list(session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)))


def test_admin_creates_lists_and_deletes(client, admin_headers, viewer_headers):
    response = _create(client, PUBLIC_URL, admin_headers, description="ops channel")
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["url"] == PUBLIC_URL
    assert created["description"] == "ops channel"
    assert created["active"] is True
    assert created["secret"].startswith("whsec_")
    assert len(base64.b64decode(created["secret"][6:], validate=True)) == 32

    response = client.get("/api/webhooks", headers=viewer_headers)
    assert response.status_code == 200
    listed = response.json()
    assert [h["id"] for h in listed] == [created["id"]]
    assert "secret" not in listed[0]

    assert _create(client, PUBLIC_URL, viewer_headers).status_code == 403
    assert client.delete(f"/api/webhooks/{created['id']}", headers=viewer_headers).status_code == (
        403
    )
    assert client.post("/api/webhooks", json={"url": PUBLIC_URL}).status_code == 401
    assert _create(client, PUBLIC_URL, admin_headers, secret="mine").status_code == 422

    assert client.delete(f"/api/webhooks/{created['id']}", headers=admin_headers).status_code == 204
    assert client.get("/api/webhooks", headers=admin_headers).json() == []
    assert client.delete(f"/api/webhooks/{created['id']}", headers=admin_headers).status_code == 404

    audit = client.get(
        "/api/audit-log", params={"entity_type": "webhook"}, headers=admin_headers
    ).json()["items"]
    assert [e["action"] for e in audit] == ["webhook.delete", "webhook.create"]
    assert all("whsec_" not in json.dumps(e) for e in audit)


FORBIDDEN = [
    "http://127.0.0.1/hook",
    "http://127.1.2.3:8080/hook",
    "http://localhost/hook",
    "http://api.localhost/hook",
    "http://10.0.0.5/hook",
    "http://172.16.1.1/hook",
    "http://192.168.1.10/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://100.100.100.200/",
    "http://0.0.0.0/",
    "http://2130706433/",
    "http://[::1]/hook",
    "http://[fe80::1]/hook",
    "http://[fd00::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[::ffff:169.254.169.254]/",
]


def test_internal_targets_are_refused(app, admin_headers):
    with TestClient(app, raise_server_exceptions=False) as client:
        _refused(client, admin_headers)


def _refused(client: TestClient, admin_headers: dict[str, str]) -> None:
    for url in FORBIDDEN:
        response = _create(client, url, admin_headers)
        assert response.status_code == 422, url
        assert response.json()["error"]["code"] == "webhook_target_forbidden", url
    for url in (
        "ftp://93.184.215.14/x",
        "file:///etc/passwd",
        "https://user:pw@93.184.215.14/",
        "https://93.184.215.14:99999/",
        "http://[::1",
        "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
        "http://[2002:a9fe:a9fe::]/",  # 6to4 of 169.254.169.254
    ):
        assert _create(client, url, admin_headers).status_code == 422, url
    assert client.get("/api/webhooks", headers=admin_headers).json() == []


def test_internal_targets_allowed_when_the_operator_says_so(database_url, admin_headers):
    app = create_app(make_settings(database_url, webhooks_allow_private=True))
    with TestClient(app) as client:
        for url in ("http://127.0.0.1:9/hook", "http://169.254.169.254/", "http://[::1]/x"):
            assert _create(client, url, admin_headers).status_code == 201, url
        assert _create(client, "ftp://127.0.0.1/", admin_headers).status_code == 422


def _verify(secret: str | bytes, request: Received) -> int:
    """Checked by the Standard Webhooks reference library, as a receiver would."""
    payload = standardwebhooks.Webhook(secret).verify(request.body, request.headers)
    assert payload == json.loads(request.body)
    return int(request.headers["webhook-timestamp"])


def _verify_legacy(secret: str, header: str, body: bytes) -> int:
    """The signature of endpoints made before Standard Webhooks, worked out by hand."""
    parts = dict(part.split("=", 1) for part in header.split(","))
    timestamp = int(parts["t"])
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    assert hmac.compare_digest(parts["v1"], expected.hexdigest())
    return timestamp


@pytest.fixture
def private_client(database_url):  # type: ignore[no-untyped-def]
    with TestClient(create_app(make_settings(database_url, webhooks_allow_private=True))) as c:
        yield c


def _exhaust(client: TestClient, make_tenant):  # type: ignore[no-untyped-def]
    tenant = make_tenant(license={"credits_total": Decimal(100), "token_budget_usd": None})
    ingest(client, tenant, event("1.5"))  # credits.warning and credits.exhausted
    return tenant


def test_delivery_to_a_real_receiver_with_a_valid_signature(
    private_client, admin_headers, database, receiver, http, make_tenant
):
    hook = _create(private_client, receiver.url, admin_headers).json()
    tenant = _exhaust(private_client, make_tenant)
    pending = _deliveries(database)
    assert [(d.status, d.attempts) for d in pending] == [("pending", 0), ("pending", 0)]

    # Without the operator's permission nothing goes to an internal address.
    assert deliver_due(database, http, allow_private=False) == 2
    assert receiver.requests == []
    assert {d.status for d in _deliveries(database)} == {"pending"}
    assert all("internal address" in (d.last_error or "") for d in _deliveries(database))
    with database.session(write=True) as session:
        session.execute(update(WebhookDelivery).values(next_attempt_at=utcnow()))

    before = int(time.time())
    assert deliver_due(database, http, allow_private=True) == 2
    assert deliver_due(database, http, allow_private=True) == 0
    assert len(receiver.requests) == 2
    types = set()
    for request in receiver.requests:
        assert request.path == "/hooks/tokenledger"
        assert request.headers["Content-Type"] == "application/json"
        timestamp = _verify(hook["secret"], request)
        assert before <= timestamp <= int(time.time())
        assert "X-Tokenledger-Signature" not in request.headers
        payload = request.json()
        assert payload["organization_id"] == tenant.org_id
        assert payload["organization"] == tenant.slug
        assert payload["license_id"] == tenant.license_id
        assert payload["period"] == "license"
        assert datetime.fromisoformat(payload["created_at"]).tzinfo is not None
        types.add(payload["type"])
    assert types == {"credits.warning", "credits.exhausted"}
    # A signature of another secret, or over another body, or of another id, does not verify.
    first = receiver.requests[0]
    other_secret = standardwebhooks.Webhook(new_secret())
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        other_secret.verify(first.body, first.headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(hook["secret"]).verify(b"{}", first.headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(hook["secret"]).verify(
            first.body, {**first.headers, "webhook-id": "msg_other"}
        )
    done = _deliveries(database)
    assert {r.headers["webhook-id"] for r in receiver.requests} == {f"msg_tl_{d.id}" for d in done}
    assert {(d.status, d.attempts, d.last_status_code) for d in done} == {("delivered", 2, 200)}
    assert all(d.delivered_at is not None for d in done)


def test_retries_with_backoff_when_the_receiver_fails(
    private_client, admin_headers, database, receiver, http, make_tenant
):
    hook = _create(private_client, receiver.url, admin_headers).json()
    tenant = make_tenant(license={"credits_total": Decimal(100), "token_budget_usd": None})
    ingest(private_client, tenant, event("0.8"))  # credits.warning only
    receiver.statuses = [500, 503]

    def due_in() -> float:
        (delivery,) = _deliveries(database)
        return (delivery.next_attempt_at - utcnow()).total_seconds()

    assert deliver_due(database, http, allow_private=True) == 1
    (delivery,) = _deliveries(database)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("pending", 1, 500)
    assert delivery.last_error == "HTTP 500"
    assert 25 < due_in() <= 30
    assert deliver_due(database, http, allow_private=True) == 0  # not due yet
    with database.session(write=True) as session:
        session.execute(
            update(WebhookDelivery).values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )
    assert deliver_due(database, http, allow_private=True) == 1
    (delivery,) = _deliveries(database)
    assert (delivery.attempts, delivery.last_status_code) == (2, 503)
    assert 55 < due_in() <= 60  # doubled
    with database.session(write=True) as session:
        session.execute(
            update(WebhookDelivery).values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )
    assert deliver_due(database, http, allow_private=True) == 1
    (delivery,) = _deliveries(database)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 3, 200)
    assert len(receiver.requests) == 3
    assert len({r.body for r in receiver.requests}) == 1  # the same payload every time
    # ... under the same webhook-id, on which the receiver deduplicates.
    assert {r.headers["webhook-id"] for r in receiver.requests} == {f"msg_tl_{delivery.id}"}
    for request in receiver.requests:
        _verify(hook["secret"], request)


def test_marked_failed_after_a_day_of_failures(
    private_client, admin_headers, database, receiver, http, make_tenant
):
    _create(private_client, receiver.url, admin_headers)
    tenant = make_tenant(license={"credits_total": Decimal(100), "token_budget_usd": None})
    ingest(private_client, tenant, event("0.8"))
    receiver.statuses = [500, 500]
    assert deliver_due(database, http, allow_private=True) == 1
    with database.session(write=True) as session:
        session.execute(
            update(WebhookDelivery).values(
                created_at=utcnow() - timedelta(hours=24, minutes=1),
                next_attempt_at=utcnow() - timedelta(seconds=1),
            )
        )
    assert deliver_due(database, http, allow_private=True) == 1
    (delivery,) = _deliveries(database)
    assert (delivery.status, delivery.attempts) == ("failed", 2)
    with database.session(write=True) as session:
        session.execute(
            update(WebhookDelivery).values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )
    assert deliver_due(database, http, allow_private=True) == 0
    assert len(receiver.requests) == 2


def test_nothing_is_lost_across_a_restart(database_url, admin_headers, receiver, make_tenant):
    settings = make_settings(database_url, webhooks_allow_private=True)
    with TestClient(create_app(settings)) as client:
        hook = _create(client, receiver.url, admin_headers).json()
        _exhaust(client, make_tenant)
    # The app and its database are gone; a new process finds the outbox in the database.
    assert receiver.requests == []
    database = Database(settings)
    try:
        with httpx.Client(timeout=5) as http:
            assert deliver_due(database, http, allow_private=True) == 2
        assert len(receiver.requests) == 2
        for request in receiver.requests:
            _verify(hook["secret"], request)
        with database.session(write=False) as session:
            assert session.scalar(select(Alert.id).limit(1)) is not None
            statuses = session.scalars(select(WebhookDelivery.status)).all()
        assert statuses == ["delivered", "delivered"]
    finally:
        database.dispose()


def test_the_background_worker_delivers(database_url, admin_headers, receiver, make_tenant):
    settings = make_settings(database_url, webhooks_allow_private=True, webhook_worker=True)
    with TestClient(create_app(settings)) as client:
        _create(client, receiver.url, admin_headers)
        _exhaust(client, make_tenant)
        deadline = time.monotonic() + 10
        while len(receiver.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(receiver.requests) == 2


def test_every_hook_gets_every_alert_and_a_deleted_hook_nothing(
    private_client, admin_headers, database, receiver, http, make_tenant
):
    first = _create(private_client, receiver.url, admin_headers).json()
    second = _create(private_client, receiver.url + "?second", admin_headers).json()
    _exhaust(private_client, make_tenant)
    assert len(_deliveries(database)) == 4
    assert private_client.delete(
        f"/api/webhooks/{second['id']}", headers=admin_headers
    ).status_code == (204)
    assert deliver_due(database, http, allow_private=True) == 2
    assert {r.path for r in receiver.requests} == {"/hooks/tokenledger"}
    with database.session(write=False) as session:
        assert session.scalars(select(WebhookDelivery.webhook_id)).all() == [first["id"]] * 2
        assert session.scalars(select(Webhook.id)).all() == [first["id"]]


def test_a_broken_endpoint_does_not_stall_the_others(
    private_client, admin_headers, database, receiver, http, make_tenant
):
    # Accepted (private targets allowed, so nothing is resolved), but httpx cannot encode it.
    broken = _create(private_client, "http://xn--zz.invalid/hook", admin_headers)
    assert broken.status_code == 201
    _create(private_client, receiver.url, admin_headers)
    _exhaust(private_client, make_tenant)
    assert deliver_due(database, http, allow_private=True) == 4
    assert len(receiver.requests) == 2
    by_hook = {(d.webhook_id, d.status, d.attempts) for d in _deliveries(database)}
    assert by_hook == {
        (broken.json()["id"], "pending", 1),
        (broken.json()["id"] + 1, "delivered", 1),
    }
    failed = [d for d in _deliveries(database) if d.webhook_id == broken.json()["id"]]
    assert all(d.last_error and d.next_attempt_at > utcnow() for d in failed)


def test_delivery_connects_to_the_checked_address_not_a_new_lookup(receiver, http):
    """DNS rebinding: the request goes to the address that passed the check."""
    import ipaddress
    from urllib.parse import urlsplit

    from tokenledger.alerts.webhooks import pinned_request

    port = urlsplit(receiver.url).port
    # A name that no resolver knows: only the pinned address can reach the receiver.
    url = f"http://hooks.example.invalid:{port}/hooks/tokenledger"
    target, headers, extensions = pinned_request(url, ipaddress.ip_address("127.0.0.1"))
    assert target == f"http://127.0.0.1:{port}/hooks/tokenledger"
    assert extensions == {}
    response = http.post(target, content=b"{}", headers=headers, extensions=extensions)
    assert response.status_code == 200
    assert receiver.requests[0].headers["Host"] == f"hooks.example.invalid:{port}"
    assert receiver.requests[0].path == "/hooks/tokenledger"

    secure, secure_headers, secure_extensions = pinned_request(
        "https://hooks.example.com/x?y=1", ipaddress.ip_address("2001:db8::1")
    )
    assert secure == "https://[2001:db8::1]/x?y=1"
    assert secure_headers == {"Host": "hooks.example.com"}
    assert secure_extensions == {"sni_hostname": "hooks.example.com"}
    assert pinned_request(url, None) == (url, {}, {})


def test_an_endpoint_made_before_standard_webhooks_keeps_working(
    private_client, admin_headers, database, receiver, http, make_tenant
):
    hook = _create(private_client, receiver.url, admin_headers).json()
    # The form secrets had before: whsec_ and 43 URL-safe characters, used whole as the key.
    old_secret = "whsec_" + base64.urlsafe_b64encode(bytes(range(32))).decode().rstrip("=")
    with database.session(write=True) as session:
        session.execute(update(Webhook).values(secret=old_secret))
    _exhaust(private_client, make_tenant)
    before = int(time.time())
    assert deliver_due(database, http, allow_private=True) == 2
    assert len(receiver.requests) == 2
    for request in receiver.requests:
        header = request.headers["X-Tokenledger-Signature"]
        legacy = _verify_legacy(old_secret, header, request.body)
        assert before <= legacy <= int(time.time())
        # The Standard Webhooks headers too, keyed with the secret's 32 bytes.
        _verify(bytes(range(32)), request)
    assert hook["id"] == _deliveries(database)[0].webhook_id
