"""Ingest keys: created once, stored as a hash, last use recorded, revocable."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.conftest import NOW, PROBE_PATH
from tests.factories import make_org
from tokenledger.audit.service import Operator
from tokenledger.auth import service
from tokenledger.auth.models import ApiKey
from tokenledger.db import utcnow
from tokenledger.errors import DomainError

TESTS = Operator("tests")


def test_key_is_random_and_only_its_hash_is_stored(database):
    with database.session(write=True) as session:
        org = make_org(session, slug="acme")
        org_key, org_secret = service.create_api_key(session, "acme ingest", "acme", actor=None)
        _, service_secret = service.create_api_key(session, "  all orgs  ", None, actor=None)
    assert org_secret.startswith("tl_")
    assert len(org_secret) >= 40
    assert org_secret != service_secret
    with database.session(write=False) as session:
        rows = {key.id: key for key in session.scalars(select(ApiKey))}
    stored = rows[org_key.id]
    assert stored.key_hash == hashlib.sha256(org_secret.encode()).hexdigest()
    assert stored.organization_id == org.id
    assert stored.prefix == org_secret[:10]
    assert stored.last_used_at is None
    for key in rows.values():
        assert org_secret not in (key.key_hash, key.prefix, key.name)
    assert sorted(key.name for key in rows.values()) == ["acme ingest", "all orgs"]
    assert {key.organization_id for key in rows.values()} == {org.id, None}


def test_bad_key_requests(database):
    cases = [
        ("k", "nope", 404, "organization_not_found"),
        ("   ", None, 422, "invalid_name"),
        ("k" * 201, None, 422, "invalid_name"),
    ]
    for name, org, status, code in cases:
        with pytest.raises(DomainError) as caught, database.session(write=True) as session:
            service.create_api_key(session, name, org, actor=None)
        assert (caught.value.status, caught.value.code) == (status, code)
    for key_id in (12345, 0, 10**20):
        with pytest.raises(DomainError) as caught, database.session(write=True) as session:
            service.revoke_api_key(session, key_id, actor=TESTS, now=NOW)
        assert caught.value.status == 404


def test_key_authenticates_ingest_routes_and_records_its_use(probe_client, database):
    client = probe_client
    with database.session(write=True) as session:
        org = make_org(session, slug="acme")
        key, secret = service.create_api_key(session, "acme ingest", "acme", actor=None)
    response = client.get(PROBE_PATH, headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 200
    assert response.json() == {"key_id": key.id, "organization_id": org.id}
    with database.session(write=False) as session:
        used = session.get(ApiKey, key.id)
        assert used is not None
        assert used.last_used_at is not None
        assert utcnow() - used.last_used_at < timedelta(seconds=30)


def test_a_keys_use_is_recorded_at_the_apps_now_at_most_once_a_minute(fixed_app, clock, database):
    with database.session(write=True) as session:
        make_org(session, slug="acme")
        key, secret = service.create_api_key(session, "acme ingest", "acme", actor=None)
    headers = {"Authorization": f"Bearer {secret}"}

    def last_used() -> object:
        with database.session(write=False) as session:
            stored = session.get(ApiKey, key.id)
            assert stored is not None
            return stored.last_used_at

    usage = {"events": [{"id": "e1", "model": "claude-sonnet-4-5", "input_tokens": 1}]}
    with TestClient(fixed_app) as client:
        assert client.get("/api/v1/budget", headers=headers).status_code == 200
        assert last_used() == NOW
        clock.now = NOW + timedelta(minutes=1)  # not more than a minute later: not written
        assert client.get("/api/v1/budget", headers=headers).status_code == 200
        assert last_used() == NOW
        # Later, written by the usage write itself (the group commit's now).
        clock.now = NOW + timedelta(minutes=1, seconds=1)
        assert client.post("/api/v1/usage", json=usage, headers=headers).status_code == 200
        assert last_used() == NOW + timedelta(minutes=1, seconds=1)


def test_unknown_and_revoked_keys_are_refused(probe_client, database):
    client = probe_client
    with database.session(write=True) as session:
        key, secret = service.create_api_key(session, "k", None, actor=None)
    headers = {"Authorization": f"Bearer {secret}"}
    assert client.get(PROBE_PATH, headers=headers).status_code == 200

    with database.session(write=True) as session:
        revoked = service.revoke_api_key(session, key.id, actor=TESTS, now=NOW)
        assert revoked.revoked_at is not None
    for bearer in (secret, secret + "x", "tl_" + "a" * 43, "not-a-key"):
        response = client.get(PROBE_PATH, headers={"Authorization": f"Bearer {bearer}"})
        assert response.status_code == 401, bearer
        assert response.json()["error"]["code"] == "invalid_api_key"
    response = client.get(PROBE_PATH)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"

    # Revoking twice keeps the first date.
    with database.session(write=True) as session:
        first = session.get(ApiKey, key.id).revoked_at  # type: ignore[union-attr]
        assert service.revoke_api_key(session, key.id, actor=TESTS, now=NOW).revoked_at == first


def test_list_keys(database):
    with database.session(write=True) as session:
        first, _ = service.create_api_key(session, "first", None, actor=None)
        second, _ = service.create_api_key(session, "second", None, actor=None)
    with database.session(write=False) as session:
        assert [key.id for key in service.list_api_keys(session)] == [first.id, second.id]
