"""API docs offline: Swagger UI from a pinned package, under the CSP."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.conftest import serve

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_docs_load_everything_from_this_server(client):
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.text
    # No inline code: every script is a file, no style element or attribute.
    assert re.findall(r"<script(?![^>]*\ssrc=)[^>]*>", html) == []
    assert "<style" not in html
    assert "style=" not in html
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(assets) == 4
    for url in assets:
        assert url.startswith("/docs/assets/"), url  # this server, never a CDN
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert "max-age" in asset.headers["cache-control"]
    kinds = {url.rsplit(".", 1)[1] for url in assets}
    assert kinds == {"css", "png", "js"}
    # ReDoc is not served: it needs inline styles, which the CSP refuses.
    assert client.get("/redoc").status_code == 404


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_swagger_ui_renders_in_a_browser_without_a_csp_violation(settings):
    with serve(settings) as base:
        result = subprocess.run(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--enable-logging=stderr",
                "--v=0",
                "--virtual-time-budget=10000",
                "--dump-dom",
                f"{base}/docs",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    # Swagger UI fetched /openapi.json and drew the operations.
    assert "/api/v1/usage" in result.stdout
    assert "opblock" in result.stdout
    assert "Content Security Policy" not in result.stderr
