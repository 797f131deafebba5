"""Fixtures of the API-wide tests: those of the admin tests (tenants, keys, live server)."""

from __future__ import annotations

from tests.admin.conftest import live_server, make_tenant, service_key

__all__ = ["live_server", "make_tenant", "service_key"]
