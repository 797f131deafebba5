"""The blocking client against a real server: batching, retries, spool replay, dead letters."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import BaseModel

from tests.client.conftest import GIVE_UP_FAST, LedgerServer, LossyProxy, Tenant, free_port
from tokenledger.client import (
    ClientClosedError,
    TokenLedgerClient,
    TokenLedgerError,
    TokenLedgerUnavailable,
)

MODEL = "claude-sonnet-4-5"


def usage(input_tokens: int = 10, output_tokens: int = 5) -> dict[str, int]:
    return {"input_tokens": input_tokens, "output_tokens": output_tokens}


def spool_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_records_anthropic_usage_object_dict_and_pydantic_model(
    ledger_server: LedgerServer, tenant: Tenant
) -> None:
    class CacheCreation(BaseModel):
        ephemeral_5m_input_tokens: int | None
        ephemeral_1h_input_tokens: int | None

    class Usage(BaseModel):
        input_tokens: int
        output_tokens: int
        cache_creation_input_tokens: int | None
        cache_read_input_tokens: int | None
        cache_creation: CacheCreation | None
        service_tier: str | None = "standard"

    sdk_like = SimpleNamespace(
        input_tokens=120,
        output_tokens=45,
        cache_creation_input_tokens=300,
        cache_read_input_tokens=2000,
        cache_creation=SimpleNamespace(
            ephemeral_5m_input_tokens=100, ephemeral_1h_input_tokens=200
        ),
        server_tool_use=None,
    )
    plain = {
        "input_tokens": 7,
        "output_tokens": 3,
        "cache_creation_input_tokens": None,
        "cache_read_input_tokens": None,
    }
    model = Usage(
        input_tokens=1,
        output_tokens=2,
        cache_creation_input_tokens=None,
        cache_read_input_tokens=4,
        cache_creation=CacheCreation(ephemeral_5m_input_tokens=None, ephemeral_1h_input_tokens=8),
    )
    with TokenLedgerClient(ledger_server.base_url, tenant.key, flush_interval=None) as client:
        first = client.record(tenant.slug, MODEL, sdk_like, refresh_id="run-1")
        second = client.record(tenant.slug, MODEL, plain, metadata={"feature": "chat"})
        third = client.record(tenant.slug, MODEL, model)
        report = client.flush()
    assert (report.created, report.duplicates, report.rejected, report.pending) == (3, 0, 0, 0)

    stored = {
        row[0]: (*row[1:-1], json.loads(row[-1]) if row[-1] else None)
        for row in ledger_server.rows(
            "SELECT external_id, input_tokens, output_tokens, cache_creation_input_tokens, "
            "cache_read_input_tokens, cache_write_1h_tokens, refresh_id, metadata "
            "FROM usage_events WHERE organization_id = ?",
            tenant.id,
        )
    }
    assert stored[first] == (120, 45, 300, 2000, 200, "run-1", None)
    assert stored[second] == (7, 3, 0, 0, 0, None, {"feature": "chat"})
    assert stored[third] == (1, 2, 8, 4, 8, None, None)
    [monthly] = ledger_server.rows(
        "SELECT input_tokens, output_tokens, cache_creation_tokens, cache_read_tokens, "
        "event_count FROM token_usage_monthly WHERE organization_id = ?",
        tenant.id,
    )
    assert monthly == (128, 50, 308, 2004, 3)


def test_a_message_id_makes_recording_one_message_twice_store_it_once(
    ledger_server: LedgerServer, tenant: Tenant, tmp_path: Path
) -> None:
    metadata = {"message_id": "msg_01XFDUDYJgAACzvnptvVoYEL"}
    created_at = datetime.now(UTC) - timedelta(minutes=1)
    dead = tmp_path / "rejected.jsonl"
    with TokenLedgerClient(
        ledger_server.base_url, tenant.key, dead_letter_path=dead, flush_interval=None
    ) as client:
        ids = [
            client.record(tenant.slug, MODEL, usage(), metadata=metadata, timestamp=created_at)
            for _ in range(2)
        ]
        same_time = client.flush()
        # Stamped at record time, the same message differs from the first in its timestamp.
        ids.append(client.record(tenant.slug, MODEL, usage(), metadata=metadata))
        other_time = client.flush()

    assert ids[0].startswith("msg-")
    assert len(set(ids)) == 1
    assert (same_time.created, same_time.duplicates) == (1, 1)
    assert (other_time.created, other_time.rejected) == (0, 1)
    assert json.loads(dead.read_text())["error"]["code"] == "idempotency_conflict"
    assert ledger_server.event_count(tenant) == 1


def test_250_records_go_in_three_batches_of_at_most_100(
    ledger_server: LedgerServer, tenant: Tenant
) -> None:
    client = TokenLedgerClient(
        ledger_server.base_url, tenant.key, batch_size=100, flush_interval=None
    )
    ids = [client.record(tenant.slug, MODEL, usage(i, 1)) for i in range(250)]
    assert client.pending == 50  # the first 200 went as two full batches while recording
    report = client.close()

    assert (report.created, report.batches, report.pending) == (50, 1, 0)
    assert len(set(ids)) == 250
    assert ledger_server.event_count(tenant) == 250
    assert ledger_server.requests_stored(tenant) == 3
    [(tokens,)] = ledger_server.rows(
        "SELECT input_tokens FROM token_usage_monthly WHERE organization_id = ?", tenant.id
    )
    assert tokens == sum(range(250))


def test_the_background_thread_flushes_on_its_interval(
    ledger_server: LedgerServer, tenant: Tenant
) -> None:
    with TokenLedgerClient(ledger_server.base_url, tenant.key, flush_interval=0.1) as client:
        for _ in range(5):
            client.record(tenant.slug, MODEL, usage())
        deadline = time.monotonic() + 10
        while client.pending and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.pending == 0
    assert ledger_server.event_count(tenant) == 5
    with pytest.raises(ClientClosedError):
        client.record(tenant.slug, MODEL, usage())


def test_a_lost_answer_is_retried_with_the_same_bytes_and_stored_once(
    ledger_server: LedgerServer, lossy_proxy: LossyProxy, tenant: Tenant
) -> None:
    client = TokenLedgerClient(
        lossy_proxy.base_url, tenant.key, flush_interval=None, max_retries=3, backoff=0.01
    )
    ids = [client.record(tenant.slug, MODEL, usage(i)) for i in range(10)]
    report = client.close()

    # The server stored the batch on the first try; two answers were lost on the way back.
    assert len(lossy_proxy.bodies) == 3
    assert len(set(lossy_proxy.bodies)) == 1
    sent = [event["id"] for event in json.loads(lossy_proxy.bodies[0])["events"]]
    assert sent == ids
    assert (report.created, report.duplicates, report.pending) == (0, 10, 0)
    assert ledger_server.event_count(tenant) == 10


def test_a_replayed_spool_of_acknowledged_events_is_answered_duplicate(
    ledger_server: LedgerServer, tenant: Tenant, tmp_path: Path
) -> None:
    spool = tmp_path / "usage.spool"
    client = TokenLedgerClient(
        ledger_server.base_url, tenant.key, spool_path=spool, flush_interval=None
    )
    for i in range(20):
        client.record(tenant.slug, MODEL, usage(i))
    written = spool.read_text()
    assert len(written.splitlines()) == 20  # durable before record() returned
    assert client.flush().created == 20
    assert spool_lines(spool) == []  # compacted after the acknowledgement
    client.close()

    # As if the process had died between the acknowledgement and the compaction.
    spool.write_text(written)
    replay = TokenLedgerClient(
        ledger_server.base_url, tenant.key, spool_path=spool, flush_interval=None
    )
    assert replay.pending == 20
    report = replay.close()

    assert (report.created, report.duplicates, report.pending) == (0, 20, 0)
    assert spool_lines(spool) == []
    assert ledger_server.event_count(tenant) == 20
    [(events,)] = ledger_server.rows(
        "SELECT event_count FROM token_usage_monthly WHERE organization_id = ?", tenant.id
    )
    assert events == 20


def test_events_survive_a_server_killed_mid_run(
    ledger_server: LedgerServer, tenant: Tenant, tmp_path: Path
) -> None:
    spool = tmp_path / "usage.spool"
    client = TokenLedgerClient(
        ledger_server.base_url,
        tenant.key,
        spool_path=spool,
        **GIVE_UP_FAST,
    )
    before = [client.record(tenant.slug, MODEL, usage(i)) for i in range(10)]
    assert client.flush().created == 10

    ledger_server.stop(signal.SIGKILL)
    during = [client.record(tenant.slug, MODEL, usage(i)) for i in range(15)]
    report = client.flush()  # does not raise: the events stay spooled
    assert (report.created, report.pending) == (0, 15)
    assert report.error is not None
    assert "Connect" in report.error
    assert client.close().pending == 15
    assert len(spool_lines(spool)) == 15

    ledger_server.start()
    with TokenLedgerClient(
        ledger_server.base_url, tenant.key, spool_path=spool, flush_interval=None
    ) as restarted:
        assert restarted.pending == 15
        assert restarted.flush().created == 15

    assert spool_lines(spool) == []
    stored = ledger_server.external_ids(tenant)
    assert stored == set(before + during)
    assert ledger_server.event_count(tenant) == 25


def test_an_invalid_event_is_dead_lettered_and_the_rest_of_its_batch_stored(
    ledger_server: LedgerServer, tenant: Tenant, tmp_path: Path
) -> None:
    spool = tmp_path / "usage.spool"
    client = TokenLedgerClient(
        ledger_server.base_url, tenant.key, spool_path=spool, flush_interval=None
    )
    good = [client.record(tenant.slug, MODEL, usage()) for _ in range(2)]
    bad = client.record(tenant.slug, "m" * 200, usage())
    good += [client.record(tenant.slug, MODEL, usage()) for _ in range(2)]
    report = client.close()

    assert (report.created, report.rejected, report.pending) == (4, 1, 0)
    assert spool_lines(spool) == []
    stored = ledger_server.external_ids(tenant)
    assert stored == set(good)
    [line] = spool_lines(tmp_path / "usage.spool.rejected.jsonl")
    rejected = json.loads(line)
    assert rejected["status"] == 422
    assert rejected["error"]["code"] == "validation_error"
    assert rejected["error"]["message"].startswith("body.events.2.model")
    assert rejected["event"]["id"] == bad


def test_a_reused_id_with_other_content_is_dead_lettered_as_a_conflict(
    ledger_server: LedgerServer, tenant: Tenant, tmp_path: Path
) -> None:
    dead = tmp_path / "rejected.jsonl"
    with TokenLedgerClient(
        ledger_server.base_url, tenant.key, dead_letter_path=dead, flush_interval=None
    ) as client:
        client.record(tenant.slug, MODEL, usage(10), event_id="call-1")
        assert client.flush().created == 1
        client.record(tenant.slug, MODEL, usage(11), event_id="call-1")
        other = client.record(tenant.slug, MODEL, usage(12))
        report = client.flush()

    assert (report.created, report.rejected) == (1, 1)
    [line] = spool_lines(dead)
    assert json.loads(line)["status"] == 409
    assert json.loads(line)["error"]["code"] == "idempotency_conflict"
    assert ledger_server.event_count(tenant) == 2
    assert ledger_server.rows(
        "SELECT input_tokens FROM usage_events WHERE external_id IN ('call-1', ?) "
        "ORDER BY input_tokens",
        other,
    ) == [(10,), (12,)]


def test_a_wrong_key_dead_letters_the_batch_instead_of_retrying_forever(
    ledger_server: LedgerServer, tenant: Tenant, tmp_path: Path
) -> None:
    dead = tmp_path / "rejected.jsonl"
    with TokenLedgerClient(
        ledger_server.base_url, "tl_wrong", dead_letter_path=dead, flush_interval=None
    ) as client:
        client.record(tenant.slug, MODEL, usage())
        client.record(tenant.slug, MODEL, usage())
        report = client.flush()
    assert (report.rejected, report.pending) == (2, 0)
    assert {json.loads(line)["status"] for line in spool_lines(dead)} == {401}


def test_refresh_and_budget(ledger_server: LedgerServer, tenant: Tenant) -> None:
    with TokenLedgerClient(ledger_server.base_url, tenant.key, flush_interval=None) as client:
        running = client.refresh(tenant.slug, "nightly-1", "running")
        done = client.refresh(tenant.slug, "nightly-1", "completed")
        again = client.refresh(tenant.slug, "nightly-1", "completed")  # a retry counts once
        budget = client.budget(tenant.slug)
        with pytest.raises(TokenLedgerError) as refused:
            client.refresh(
                tenant.slug,
                "nightly-2",
                "completed",
                started_at="2026-01-02T00:00:00Z",
                finished_at="2026-01-01T00:00:00Z",
            )
    assert running["status"] == "running"
    assert running["started_at"] is not None
    assert done["status"] == again["status"] == "completed"
    assert ledger_server.rows(
        "SELECT sum(refresh_count) FROM token_usage_monthly WHERE organization_id = ?", tenant.id
    ) == [(1,)]
    assert budget["organization"] == tenant.slug
    assert budget["state"] == "no_license"
    assert (refused.value.status, refused.value.code) == (422, "invalid_refresh")


def test_refresh_raises_unavailable_when_nothing_listens() -> None:
    client = TokenLedgerClient(
        f"http://127.0.0.1:{free_port()}",
        "tl_key",
        **GIVE_UP_FAST,
    )
    with client, pytest.raises(TokenLedgerUnavailable):
        client.refresh("acme", "run-1", "completed")


WRITER = """
import sys
from tokenledger.client import TokenLedgerClient
url, key, org, spool, name = sys.argv[1:]
client = TokenLedgerClient(url, key, spool_path=spool, batch_size=7, flush_interval=None)
for i in range(60):
    client.record(org, "claude-sonnet-4-5", {"input_tokens": i}, event_id=f"{name}-{i}")
assert client.close().pending == 0
"""


def test_two_processes_share_one_spool(
    ledger_server: LedgerServer, tenant: Tenant, tmp_path: Path
) -> None:
    spool = tmp_path / "shared.spool"
    writers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                ledger_server.base_url,
                tenant.key,
                tenant.slug,
                str(spool),
                name,
            ],
        )
        for name in ("a", "b")
    ]
    assert [writer.wait(timeout=60) for writer in writers] == [0, 0]

    # Appends and compactions interleaved: no line torn, none resurrected, none left.
    assert spool_lines(spool) == []
    assert not (tmp_path / "shared.spool.rejected.jsonl").exists()
    assert ledger_server.event_count(tenant) == 120
