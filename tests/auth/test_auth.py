"""Admin authentication: tokens, session cookies, CSRF, roles, throttling, passwords."""

from __future__ import annotations

from datetime import timedelta

import jwt
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.conftest import ADMIN_PASSWORD, SECRET, add_admin, login, make_settings
from tokenledger.app import create_app
from tokenledger.auth.models import AdminUser, LoginAttempt
from tokenledger.auth.passwords import hash_password, password_problem, verify_password
from tokenledger.auth.service import create_admin
from tokenledger.auth.tokens import issue_token
from tokenledger.db import utcnow
from tokenledger.errors import DomainError


def _set_cookie_headers(response) -> dict[str, str]:  # type: ignore[no-untyped-def]
    cookies = {}
    for header in response.headers.get_list("set-cookie"):
        name = header.split("=", 1)[0]
        cookies[name] = header.lower()
    return cookies


def test_login_issues_a_signed_expiring_bearer_token(client, database):
    user_id = add_admin(database, "ops@example.com", "viewer")
    body = login(client, "  OPS@Example.com ", ADMIN_PASSWORD)
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 12 * 60 * 60
    claims = jwt.decode(
        body["access_token"], SECRET, algorithms=["HS256"], audience="tokenledger-admin"
    )
    assert claims["sub"] == str(user_id)
    assert claims["exp"] - claims["iat"] == body["expires_in"]

    client.cookies.clear()
    me = client.get("/api/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.json() == {"id": user_id, "email": "ops@example.com", "role": "viewer"}


def test_bad_tokens_are_refused(client, database):
    user_id = add_admin(database, "ops@example.com")
    expired, _ = issue_token(SECRET, user_id, -1)
    forged, _ = issue_token("another-secret-of-enough-length-0123456789", user_id, 60)
    good, _ = issue_token(SECRET, user_id, 60)
    unknown_user, _ = issue_token(SECRET, user_id + 1000, 60)
    for token in (expired, forged, good[:-2] + "xx", unknown_user, "garbage"):
        response = client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, token
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"]["code"] == "not_authenticated"
    assert (
        client.get("/api/auth/me", headers={"Authorization": f"Bearer {good}"}).status_code == 200
    )


@pytest.mark.parametrize(
    ("sub", "ver"),
    [
        ("9" * 30, 0),
        (str(2**63), 0),
        (str(2**31), 0),
        ("0", 0),
        ("-1", 0),
        ("1", 10**30),
        ("1", -(2**63) - 1),
        (["1"], 0),
        ("1", "x"),
    ],
)
def test_tokens_signed_with_the_real_secret_but_claims_no_row_can_have_are_401(
    client, database, sub, ver
):
    """Reported from outside: a genuine signature over a huge `sub` gave 500 (the id
    could not be bound); the page's session cookie takes the same path."""
    add_admin(database, "ops@example.com")
    now = utcnow()
    claims = {
        "sub": sub,
        "aud": "tokenledger-admin",
        "iat": now,
        "exp": now + timedelta(minutes=5),
        "csrf": "c",
        "ver": ver,
    }
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    response = client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "not_authenticated"


def test_disabled_user_loses_access_at_once(client, database):
    user_id = add_admin(database, "ops@example.com")
    token = login(client, "ops@example.com")["access_token"]
    client.cookies.clear()
    with database.session(write=True) as session:
        session.get(AdminUser, user_id).disabled_at = utcnow()  # type: ignore[union-attr]
    response = client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    # And the right password no longer logs in, with the same answer as a wrong one.
    response = client.post(
        "/api/auth/token", data={"username": "ops@example.com", "password": ADMIN_PASSWORD}
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_credentials"


def test_role_is_read_from_the_database_not_the_token(client, database):
    user_id = add_admin(database, "ops@example.com", "admin")
    headers = {"Authorization": f"Bearer {login(client, 'ops@example.com')['access_token']}"}
    client.cookies.clear()
    with database.session(write=True) as session:
        session.get(AdminUser, user_id).role = "viewer"  # type: ignore[union-attr]
    response = client.post("/api/organizations", json={"name": "Acme"}, headers=headers)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "admin_required"


def test_viewer_reads_and_admin_writes(client, admin_headers, viewer_headers):
    created = client.post("/api/organizations", json={"name": "Acme"}, headers=admin_headers)
    assert created.status_code == 201
    org_id = created.json()["id"]
    assert client.get(f"/api/organizations/{org_id}", headers=viewer_headers).status_code == 200
    refused = client.patch(
        f"/api/organizations/{org_id}", json={"name": "Other"}, headers=viewer_headers
    )
    assert refused.status_code == 403
    assert refused.json() == {
        "error": {"code": "admin_required", "message": "this action needs the admin role"}
    }
    assert client.get(f"/api/organizations/{org_id}", headers=viewer_headers).json()["name"] == (
        "Acme"
    )


def test_session_cookie_flags_over_http(client, database):
    add_admin(database, "ops@example.com")
    response = client.post(
        "/api/auth/token", data={"username": "ops@example.com", "password": ADMIN_PASSWORD}
    )
    cookies = _set_cookie_headers(response)
    session, csrf = cookies["tl_session"], cookies["tl_csrf"]
    assert "httponly" in session
    assert "samesite=lax" in session
    assert "secure" not in session
    # The page's scripts read the CSRF cookie to echo it, so it is not HttpOnly.
    assert "httponly" not in csrf
    assert "samesite=lax" in csrf
    assert client.cookies["tl_session"] == response.json()["access_token"]


def test_session_cookie_is_secure_behind_https(app, database):
    add_admin(database, "ops@example.com")
    with TestClient(app, base_url="https://testserver") as client:
        response = client.post(
            "/api/auth/token", data={"username": "ops@example.com", "password": ADMIN_PASSWORD}
        )
    cookies = _set_cookie_headers(response)
    assert "; secure" in cookies["tl_session"]
    assert "; secure" in cookies["tl_csrf"]


def test_cookie_session_needs_csrf_token_for_unsafe_requests(client, database):
    add_admin(database, "ops@example.com")
    login(client, "ops@example.com")
    csrf = client.cookies["tl_csrf"]
    # Reads work with the cookie alone.
    assert client.get("/api/auth/me").status_code == 200
    assert client.get("/api/organizations").status_code == 200

    for headers in (
        {},
        {"X-CSRF-Token": "wrong"},
        {"X-CSRF-Token": ""},
        {"X-CSRF-Token": "é".encode("latin-1")},
    ):
        response = client.post("/api/organizations", json={"name": "Acme"}, headers=headers)
        assert response.status_code == 403, headers
        assert response.json()["error"]["code"] == "csrf_failed"
    assert client.get("/api/organizations").json()["total"] == 0

    response = client.post(
        "/api/organizations", json={"name": "Acme"}, headers={"X-CSRF-Token": csrf}
    )
    assert response.status_code == 201

    # A CSRF token of another session does not do.
    other = TestClient(client.app)
    login(other, "ops@example.com")
    response = client.post(
        "/api/organizations",
        json={"name": "Beta"},
        headers={"X-CSRF-Token": other.cookies["tl_csrf"]},
    )
    assert response.status_code == 403


def test_bearer_requests_need_no_csrf_token(client, admin_headers):
    response = client.post("/api/organizations", json={"name": "Acme"}, headers=admin_headers)
    assert response.status_code == 201


def test_logout_clears_the_session_cookies(client, database):
    add_admin(database, "ops@example.com", "viewer")
    login(client, "ops@example.com")
    csrf = client.cookies["tl_csrf"]
    assert client.post("/api/auth/logout").status_code == 403  # cookie session: CSRF needed
    response = client.post("/api/auth/logout", headers={"X-CSRF-Token": csrf})
    assert response.status_code == 204
    assert "tl_session" not in client.cookies
    assert "tl_csrf" not in client.cookies
    assert client.get("/api/auth/me").status_code == 401


def test_unknown_user_and_wrong_password_get_the_same_answer(client, database):
    add_admin(database, "ops@example.com")
    wrong = client.post(
        "/api/auth/token", data={"username": "ops@example.com", "password": "not-the-password"}
    )
    unknown = client.post(
        "/api/auth/token", data={"username": "nobody@example.com", "password": "not-the-password"}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert (
        wrong.json()
        == unknown.json()
        == {"error": {"code": "invalid_credentials", "message": "wrong email or password"}}
    )
    assert "set-cookie" not in wrong.headers
    assert "set-cookie" not in unknown.headers


def test_login_needs_the_oauth2_password_form(client, database):
    add_admin(database, "ops@example.com")
    response = client.post(
        "/api/auth/token", json={"username": "ops@example.com", "password": ADMIN_PASSWORD}
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"


def test_login_is_throttled_per_account(database_url, database):
    add_admin(database, "ops@example.com")
    app = create_app(make_settings(database_url, login_max_failures=2))
    with TestClient(app) as client:
        for _ in range(2):
            response = client.post(
                "/api/auth/token", data={"username": "ops@example.com", "password": "wrong-one"}
            )
            assert response.status_code == 401
        # Throttled now, even with the right password; the failures were kept in the
        # database although each of those requests failed.
        response = client.post(
            "/api/auth/token", data={"username": "ops@example.com", "password": ADMIN_PASSWORD}
        )
        assert response.status_code == 429
        assert response.json()["error"]["code"] == "too_many_attempts"
        assert 850 <= int(response.headers["retry-after"]) <= 900
        # An unknown account is throttled exactly the same way.
        for _ in range(2):
            client.post(
                "/api/auth/token", data={"username": "ghost@example.com", "password": "wrong-one"}
            )
        ghost = client.post(
            "/api/auth/token", data={"username": "ghost@example.com", "password": "wrong-one"}
        )
        assert ghost.status_code == 429
        assert ghost.json() == response.json()
    with database.session(write=False) as session:
        emails = session.scalars(select(LoginAttempt.email)).all()
    assert sorted(emails) == ["ghost@example.com"] * 2 + ["ops@example.com"] * 2


def test_login_is_throttled_per_client_address(database_url, database):
    add_admin(database, "ops@example.com")
    app = create_app(make_settings(database_url, login_max_failures=1))
    with TestClient(app, client=("203.0.113.7", 4000)) as attacker:
        # The address limit is four times the per-account one: spread over accounts.
        for n in range(4):
            response = attacker.post(
                "/api/auth/token", data={"username": f"u{n}@example.com", "password": "wrong"}
            )
            assert response.status_code == 401
        response = attacker.post(
            "/api/auth/token", data={"username": "ops@example.com", "password": ADMIN_PASSWORD}
        )
        assert response.status_code == 429
        assert int(response.headers["retry-after"]) >= 1
    with TestClient(app, client=("198.51.100.9", 4000)) as other:
        assert login(other, "ops@example.com")["token_type"] == "bearer"


def test_old_failures_leave_the_window(database_url, database):
    add_admin(database, "ops@example.com")
    with database.session(write=True) as session:
        old = utcnow() - timedelta(seconds=120)
        session.add_all(
            LoginAttempt(email="ops@example.com", client_address="testclient", created_at=old)
            for _ in range(5)
        )
    app = create_app(make_settings(database_url, login_max_failures=2, login_window_seconds=60))
    with TestClient(app) as client:
        assert login(client, "ops@example.com")["token_type"] == "bearer"


def test_passwords_are_hashed_with_argon2id(database):
    with database.session(write=True) as session:
        create_admin(session, "ops@example.com", ADMIN_PASSWORD, "admin", actor=None)
    with database.session(write=False) as session:
        stored = session.scalar(select(AdminUser.password_hash))
    assert stored is not None
    assert stored.startswith("$argon2id$")
    assert ADMIN_PASSWORD not in stored
    assert verify_password(stored, ADMIN_PASSWORD)


def test_verify_password():
    stored = hash_password(ADMIN_PASSWORD)
    assert stored.startswith("$argon2id$")
    assert verify_password(stored, ADMIN_PASSWORD)
    assert not verify_password(stored, ADMIN_PASSWORD + "x")
    # No account: the dummy hash is checked, so that the answer takes as long.
    assert not verify_password(None, ADMIN_PASSWORD)
    assert not verify_password(None, "not-a-real-password-for-timing")
    assert not verify_password("not-a-hash", ADMIN_PASSWORD)


def test_create_admin_refuses_bad_accounts(database):
    add_admin(database, "ops@example.com")
    cases = [
        ("OPS@example.com", ADMIN_PASSWORD, "admin", 409, "admin_exists"),
        ("new@example.com", "short", "admin", 422, "weak_password"),
        ("new@example.com", "aaaaaaaaaaaa", "admin", 422, "weak_password"),
        ("new@example.com", "password123", "admin", 422, "weak_password"),
        ("new@example.com", ADMIN_PASSWORD, "owner", 422, "invalid_role"),
        ("not-an-email", ADMIN_PASSWORD, "admin", 422, "invalid_email"),
    ]
    for email, password, role, status, code in cases:
        with pytest.raises(DomainError) as caught, database.session(write=True) as session:
            create_admin(session, email, password, role, actor=None)
        assert (caught.value.status, caught.value.code) == (status, code), email
    with database.session(write=False) as session:
        assert session.scalars(select(AdminUser.email)).all() == ["ops@example.com"]


def test_password_rules():
    assert password_problem("correct-horse-battery") is None
    assert password_problem("abc") is not None
    assert password_problem("ababababababab") is not None
    assert password_problem("me@example.com", "me@example.com") is not None


def test_an_overlong_client_address_does_not_break_login_or_audit(app, database):
    """The address columns hold 64 characters; a proxy may hand over a longer host."""
    address = "2001:db8:85a3:8d3:1319:8a2e:370:7348%" + "x" * 60
    add_admin(database, "ops@example.com")
    with TestClient(app, client=(address, 4000)) as client:
        failed = client.post(
            "/api/auth/token", data={"username": "ops@example.com", "password": "wrong-one"}
        )
        assert failed.status_code == 401
        token = login(client, "ops@example.com")["access_token"]
        client.cookies.clear()
        created = client.post(
            "/api/organizations",
            json={"name": "Acme"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert created.status_code == 201
        entry = client.get("/api/audit-log", headers={"Authorization": f"Bearer {token}"})
    assert entry.json()["items"][0]["client_address"] == address[:64]
    with database.session(write=False) as session:
        assert session.scalars(select(LoginAttempt.client_address)).all() == [address[:64]]


def test_an_overlong_username_is_a_failed_login_not_a_server_error(app, database):
    add_admin(database, "ops@example.com")
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post(
            "/api/auth/token", data={"username": "a" * 400 + "@example.com", "password": "x"}
        )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_credentials"


def test_logout_revokes_the_accounts_tokens(client, database):
    add_admin(database, "ops@example.com", "admin")
    first = login(client, "ops@example.com")["access_token"]
    client.cookies.clear()
    second = login(client, "ops@example.com")["access_token"]
    client.cookies.clear()
    headers = {"Authorization": f"Bearer {first}"}
    assert client.get("/api/auth/me", headers=headers).status_code == 200
    assert client.post("/api/auth/logout", headers=headers).status_code == 204
    # Every token of the account stops working, not only the cookie of this browser.
    assert client.get("/api/auth/me", headers=headers).status_code == 401
    other = {"Authorization": f"Bearer {second}"}
    assert client.get("/api/auth/me", headers=other).status_code == 401
    fresh = login(client, "ops@example.com")["access_token"]
    assert (
        client.get("/api/auth/me", headers={"Authorization": f"Bearer {fresh}"}).status_code == 200
    )


def test_old_login_failures_are_pruned(client, database):
    from datetime import timedelta

    from sqlalchemy import func, select, update

    from tokenledger.auth.models import LoginAttempt
    from tokenledger.db import utcnow

    add_admin(database, "ops@example.com")
    for _ in range(3):
        client.post("/api/auth/token", data={"username": "ops@example.com", "password": "nope"})
    with database.session(write=True) as session:
        session.execute(update(LoginAttempt).values(created_at=utcnow() - timedelta(days=2)))
    client.post("/api/auth/token", data={"username": "ops@example.com", "password": "nope"})
    with database.session(write=False) as session:
        assert session.scalar(select(func.count()).select_from(LoginAttempt)) == 1
