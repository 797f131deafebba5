"""Security headers of the HTML pages: no inline script or style, no framing."""

from __future__ import annotations

from starlette.responses import Response

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "object-src 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    # Pages show account data: never kept by shared caches, nor by the browser's.
    "Cache-Control": "no-store",
}


def set_security_headers(response: Response) -> None:
    """Set the page headers unless a middleware of the app has set them already."""
    for name, value in PAGE_HEADERS.items():
        response.headers.setdefault(name, value)
