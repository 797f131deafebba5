"""Fixtures of the API-wide tests: the admin tests' keys and live server (tenants: root)."""

from __future__ import annotations

from tests.admin.conftest import live_server, service_key

__all__ = ["live_server", "service_key"]
