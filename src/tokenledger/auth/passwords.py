"""Password hashing with argon2id, and the strength rule for admin passwords."""

from __future__ import annotations

from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
MIN_PASSWORD_LENGTH = 10
_COMMON = {"password", "password1", "password123", "1234567890", "qwertyuiop", "letmein123"}


# Made on first use, not at import: each CLI command and server worker would pay ~0.1 s for it.
@cache
def _dummy_hash() -> str:
    """A hash to check when the account does not exist, so both failures take as long."""
    return _hasher.hash("not-a-real-password-for-timing")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        matched = _hasher.verify(password_hash or _dummy_hash(), password)
        return matched and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def password_problem(password: str, email: str = "") -> str | None:
    """Why a password is too weak, or None when it is acceptable."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"password must have at least {MIN_PASSWORD_LENGTH} characters"
    if password.lower() in _COMMON or len(set(password)) < 4:
        return "password is too easy to guess"
    if email and password.lower() == email.lower():
        return "password must not be the email address"
    return None
