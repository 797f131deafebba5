"""The headers every response carries: security, and whether a cache may keep it."""

from __future__ import annotations


# Pages and the docs load their scripts and styles as files from this server; nothing
# inline, nothing from elsewhere, never inside a frame.
def content_security_policy(frame_ancestors: str = "'none'") -> str:
    return "; ".join(
        (
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "font-src 'self'",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            f"frame-ancestors {frame_ancestors}",
        )
    )


CONTENT_SECURITY_POLICY = content_security_policy()
# The tenant portal (/portal/...): the same policy, but framed by the origins the operator
# lists (TOKENLEDGER_PORTAL_FRAME_ANCESTORS); its token is in the address, so no referrer.
PORTAL_PREFIX = "/portal/"


def portal_headers(frame_origins: list[str]) -> dict[str, str]:
    headers = {
        **SECURITY_HEADERS,
        "referrer-policy": "no-referrer",
        "content-security-policy": content_security_policy(" ".join(frame_origins) or "'none'"),
    }
    if frame_origins:
        # X-Frame-Options cannot name origins; frame-ancestors alone decides.
        del headers["x-frame-options"]
    return headers


SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-frame-options": "DENY",
}
# Answers, tokens above all (RFC 6749 section 5.1), are never stored by a cache; static
# files (the UI's, the docs' assets) may be, for a while.
NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}
CACHEABLE_PREFIXES = ("/static/", "/docs/assets/")
CACHEABLE = {"cache-control": "public, max-age=3600"}


def security_headers(path: str) -> dict[str, str]:
    """The headers every response carries, for a request of this path."""
    caching = CACHEABLE if path.startswith(CACHEABLE_PREFIXES) else NO_STORE
    return {**SECURITY_HEADERS, **caching}
