"""API docs that work offline and under the strict CSP: Swagger UI at /docs.

Its code comes from the pinned fastapi-offline package (swagger-ui-bundle.js and
swagger-ui.css), never from a CDN; the script that starts it is a file of ours
(static/swagger-init.js), since the CSP allows no inline script. There is no /redoc:
ReDoc injects inline styles (styled-components, without a nonce hook in its bundle),
which the CSP refuses; /openapi.json serves any other viewer.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

# Cacheable like /static/ (headers.CACHEABLE_PREFIXES), apart from the UI's files.
ASSETS_PREFIX = "/docs/assets/"
VENDOR_PREFIX = ASSETS_PREFIX + "vendor"
OWN_PREFIX = ASSETS_PREFIX + "own"
_VENDOR = Path(fastapi_offline.__file__).parent / "static"
_OWN = Path(__file__).parent / "static"


def install_docs(app: FastAPI, openapi_url: str) -> None:
    """Serve /docs and the files it loads."""
    app.mount(VENDOR_PREFIX, StaticFiles(directory=_VENDOR), name="docs-vendor")
    app.mount(OWN_PREFIX, StaticFiles(directory=_OWN), name="docs-own")
    title = escape(app.title)
    url = escape(openapi_url)

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return HTMLResponse(
            f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} - API</title>
<link rel="stylesheet" href="{VENDOR_PREFIX}/swagger-ui.css">
<link rel="icon" href="{VENDOR_PREFIX}/favicon.png">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{url}"></div>
<script src="{VENDOR_PREFIX}/swagger-ui-bundle.js"></script>
<script src="{OWN_PREFIX}/swagger-init.js"></script>
</body>
</html>
"""
        )
