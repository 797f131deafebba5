"""Fixtures of the alerts tests: the app reads "now" from the clock fixture."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def app(fixed_app: Any) -> Any:
    """Every test's app (and `client`) reads "now" from the clock fixture: NOW
    (2026-11-18 12:00 UTC) unless the test sets clock.now. Only the servers of serve()
    and the webhook worker run on the real clock."""
    return fixed_app
