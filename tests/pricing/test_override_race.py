"""PostgreSQL: two overlapping price overrides of one model sent at the same instant; the
no-overlap rule holds as if they had come one after the other (one stored, one 409)."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from tests.conftest import serving
from tokenledger.app import create_app
from tokenledger.config import Settings
from tokenledger.db import Database, utcnow
from tokenledger.pricing.models import PriceOverrideRow

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

ROUNDS = 20
FIRST = {"input": "1", "output": "2", "valid_from": "2026-01-01T00:00:00Z"}
FIRST["valid_until"] = "2026-06-01T00:00:00Z"
SECOND = {"input": "3", "output": "4", "valid_from": "2026-03-01T00:00:00Z"}
SECOND["valid_until"] = "2026-09-01T00:00:00Z"


def test_concurrent_overlapping_overrides_store_one(
    settings: Settings, database: Database, admin_headers: dict[str, str]
) -> None:
    with serving(create_app(settings)) as url:
        clients = [httpx.Client(base_url=url, headers=admin_headers, timeout=60) for _ in range(2)]
        try:
            statuses = [
                _race(clients, f"/api/pricing/overrides/anthropic/race-model-{round_}")
                for round_ in range(ROUNDS)
            ]
        finally:
            for client in clients:
                client.close()
    with database.session(write=False) as session:
        stored = dict(
            session.execute(
                select(PriceOverrideRow.model, func.count()).group_by(PriceOverrideRow.model)
            ).all()
        )
    assert stored == {f"race-model-{round_}": 1 for round_ in range(ROUNDS)}
    assert all(sorted(pair) == [200, 409] for pair in statuses), statuses


def _race(clients: list[httpx.Client], path: str) -> tuple[int, int]:
    """FIRST and SECOND sent to path at once (a barrier): the two statuses."""
    barrier = threading.Barrier(2)
    answers: dict[int, int] = {}

    def put(index: int, body: dict[str, Any]) -> None:
        barrier.wait()
        answers[index] = clients[index].put(path, json=body).status_code

    threads = [
        threading.Thread(target=put, args=(index, body))
        for index, body in enumerate((FIRST, SECOND))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return answers.get(0, 0), answers.get(1, 0)


def test_the_database_refuses_an_overlap_whoever_writes_it(database: Database) -> None:
    """The exclusion constraint: rows that overlap cannot both be stored, even by a writer
    that skips the service's checks."""
    now = utcnow()
    with database.session(write=True) as session:
        session.execute(
            text(
                "INSERT INTO price_overrides (provider, model, input_nano_per_mtok, "
                "output_nano_per_mtok, valid_from, valid_until, created_at, updated_at) "
                "VALUES ('anthropic', 'm', 1, 1, '2026-01-01', NULL, :now, :now)"
            ),
            {"now": now.replace(tzinfo=None)},
        )
    with pytest.raises(IntegrityError, match="ex_price_overrides_no_overlap"):  # noqa: SIM117
        with database.session(write=True) as session:
            session.execute(
                text(
                    "INSERT INTO price_overrides (provider, model, input_nano_per_mtok, "
                    "output_nano_per_mtok, valid_from, valid_until, created_at, updated_at) "
                    "VALUES ('anthropic', 'm', 1, 1, '2026-05-01', '2026-06-01', :now, :now)"
                ),
                {"now": now.replace(tzinfo=None)},
            )
