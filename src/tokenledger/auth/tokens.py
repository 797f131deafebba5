"""Signed, expiring bearer tokens (JWT, HS256) for admin users."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

import jwt

from tokenledger.db import utcnow

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
    try:
        payload = jwt.decode(token, secret, algorithms=[_ALGORITHM], audience=_AUDIENCE)
        return TokenClaims(
            user_id=int(payload["sub"]), csrf=str(payload["csrf"]), version=int(payload["ver"])
        )
    except (jwt.PyJWTError, KeyError, ValueError):
        return None
