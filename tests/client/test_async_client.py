"""The asyncio client against a real server: the same behaviour as the blocking one."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from types import SimpleNamespace

from tests.client.conftest import GIVE_UP_FAST, LedgerServer, Tenant
from tokenledger.client import AsyncTokenLedgerClient

MODEL = "claude-sonnet-4-5"


def test_async_record_flush_and_close(ledger_server: LedgerServer, tenant: Tenant) -> None:
    sdk_like = SimpleNamespace(
        input_tokens=50,
        output_tokens=20,
        cache_creation_input_tokens=30,
        cache_read_input_tokens=None,
        cache_creation=SimpleNamespace(ephemeral_5m_input_tokens=30, ephemeral_1h_input_tokens=0),
    )

    async def run() -> tuple[list[str], int, int]:
        async with AsyncTokenLedgerClient(ledger_server.base_url, tenant.key) as client:
            ids = [
                await client.record(tenant.slug, MODEL, sdk_like),
                await client.record(tenant.slug, MODEL, {"input_tokens": 5, "output_tokens": 1}),
            ]
            flushed = await client.flush()
            ids.append(await client.record(tenant.slug, MODEL, {"output_tokens": 2}))
            budget = await client.budget(tenant.slug)
            assert budget["organization"] == tenant.slug
        # The third event went on close().
        return ids, flushed.created, client.pending

    ids, created, pending = asyncio.run(run())
    assert (created, pending) == (2, 0)
    stored = {
        row[0]: row[1:]
        for row in ledger_server.rows(
            "SELECT external_id, input_tokens, output_tokens, cache_creation_input_tokens, "
            "cache_read_input_tokens FROM usage_events WHERE organization_id = ?",
            tenant.id,
        )
    }
    assert stored == {ids[0]: (50, 20, 30, 0), ids[1]: (5, 1, 0, 0), ids[2]: (0, 2, 0, 0)}


def test_async_batches_and_background_flush(ledger_server: LedgerServer, tenant: Tenant) -> None:
    async def run() -> None:
        client = AsyncTokenLedgerClient(
            ledger_server.base_url, tenant.key, batch_size=100, flush_interval=None
        )
        for i in range(250):
            await client.record(tenant.slug, MODEL, {"input_tokens": i})
        assert client.pending == 50
        assert (await client.close()).created == 50

        async with AsyncTokenLedgerClient(
            ledger_server.base_url, tenant.key, flush_interval=0.05
        ) as background:
            await background.record(tenant.slug, MODEL, {"input_tokens": 1})
            for _ in range(200):
                if background.pending == 0:
                    break
                await asyncio.sleep(0.02)
            assert background.pending == 0

    asyncio.run(run())
    assert ledger_server.event_count(tenant) == 251
    assert ledger_server.requests_stored(tenant) == 4


def test_async_spool_survives_a_restart(
    ledger_server: LedgerServer, tenant: Tenant, tmp_path: Path
) -> None:
    spool = tmp_path / "usage.spool"

    async def record_while_down() -> None:
        client = AsyncTokenLedgerClient(
            ledger_server.base_url,
            tenant.key,
            spool_path=spool,
            **GIVE_UP_FAST,
        )
        await client.record(tenant.slug, MODEL, {"input_tokens": 1}, event_id="a-1")
        await client.flush()
        ledger_server.stop(signal.SIGKILL)
        await client.record(tenant.slug, MODEL, {"input_tokens": 2}, event_id="a-2")
        report = await client.close()
        assert (report.pending, report.created) == (1, 0)

    async def replay() -> None:
        async with AsyncTokenLedgerClient(
            ledger_server.base_url, tenant.key, spool_path=spool, flush_interval=None
        ) as client:
            assert client.pending == 1
            assert (await client.flush()).created == 1

    asyncio.run(record_while_down())
    assert [json.loads(line)["id"] for line in spool.read_text().splitlines()] == ["a-2"]
    ledger_server.start()
    asyncio.run(replay())
    assert spool.read_text() == ""
    stored = ledger_server.rows(
        "SELECT external_id FROM usage_events WHERE organization_id = ? ORDER BY external_id",
        tenant.id,
    )
    assert stored == [("a-1",), ("a-2",)]
