"""Signed, expiring bearer tokens (JWT, HS256) for admin users."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

import jwt

from tokenledger.db import MAX_ROW_ID, utcnow

_ALGORITHM = "HS256"
_AUDIENCE = "tokenledger-admin"


@dataclass(frozen=True, slots=True)
class TokenClaims:
    user_id: int
    csrf: str
    version: int = 0


def issue_token(
    secret: str, user_id: int, minutes: int, version: int = 0
) -> tuple[str, TokenClaims]:
    now = utcnow()  # the real clock: a token's lifetime is real time, checked by PyJWT
    claims = TokenClaims(user_id=user_id, csrf=secrets.token_urlsafe(24), version=version)
    payload = {
        "sub": str(user_id),
        "aud": _AUDIENCE,
        "iat": now,
        "exp": now + timedelta(minutes=minutes),
        "csrf": claims.csrf,
        "ver": version,
    }
    return jwt.encode(payload, secret, algorithm=_ALGORITHM), claims


def decode_token(secret: str, token: str) -> TokenClaims | None:
    """The claims of a valid token; None for anything else, a genuine signature over
    claims no account can have (an id past any row, a version past int64) included."""
    try:
        payload = jwt.decode(token, secret, algorithms=[_ALGORITHM], audience=_AUDIENCE)
        user_id, version = payload["sub"], payload["ver"]
        if not isinstance(user_id, str) or not user_id.isascii() or not user_id.isdigit():
            return None
        if len(user_id) > 10 or not 1 <= int(user_id) <= MAX_ROW_ID:
            return None
        if type(version) is not int or not 0 <= version <= 2**63 - 1:
            return None
        return TokenClaims(user_id=int(user_id), csrf=str(payload["csrf"]), version=version)
    except (jwt.PyJWTError, KeyError, ValueError, TypeError):
        return None
