"""/metrics of a server with several workers adds up every worker; outbox gauges."""

from __future__ import annotations

import re
import threading
from collections import Counter
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.multiprocess import MultiProcessCollector

from tests.conftest import make_settings, new_tenant
from tests.operations.conftest import Server
from tokenledger.alerts.schemas import WebhookCreate
from tokenledger.alerts.webhooks import create_webhook
from tokenledger.app import create_app
from tokenledger.audit.service import Operator
from tokenledger.db import utcnow


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the exposition text, 0 when absent."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$", line)
        if match is None or match.group(1) != name:
            continue
        found = ",".join(sorted((match.group(2) or "").split(","))) if match.group(2) else ""
        if all(part in found.split(",") for part in wanted.split(",") if part):
            total += float(match.group(3))
    return total


def events_by_worker(directory: Path) -> Counter[int]:
    """Created events counted in each worker's own file, read by prometheus_client itself."""
    counts: Counter[int] = Counter()
    for path in directory.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        for metric in MultiProcessCollector.merge([str(path)]):
            for s in metric.samples:
                if s.name == "tokenledger_usage_events_total" and s.labels == {"status": "created"}:
                    counts[pid] += int(s.value)
    return counts


def test_metrics_add_up_every_worker(database_url, database, server_root, tmp_path):
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_99999.db").write_bytes(b"stale figures of an earlier run")
    tenant = new_tenant(database, {"valid_from": utcnow()})
    server = Server(database_url, server_root, workers=2, PROMETHEUS_MULTIPROC_DIR=str(directory))
    server.start()
    sent = 0
    lock = threading.Lock()

    def post_some(thread: int, round_: int) -> None:
        nonlocal sent
        for n in range(5):
            event = {
                "id": f"m-{round_}-{thread}-{n}",
                "model": "claude-sonnet-4-5",
                "input_tokens": 10,
            }
            # A new connection each time, so that either worker may accept it.
            response = httpx.post(
                f"{server.url}/api/v1/usage",
                json={"events": [event]},
                headers=tenant.headers,
                timeout=30,
            )
            assert response.status_code == 200, response.text
            with lock:
                sent += 1

    try:
        assert not (directory / "counter_99999.db").exists()  # emptied at start
        for round_ in range(20):
            threads = [threading.Thread(target=post_some, args=(t, round_)) for t in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            per_worker = events_by_worker(directory)
            if len([pid for pid, count in per_worker.items() if count]) >= 2:
                break
        assert len([pid for pid, count in per_worker.items() if count]) == 2, per_worker
        text = httpx.get(f"{server.url}/metrics", timeout=30).text
    finally:
        server.stop()

    assert sum(per_worker.values()) == sent
    assert sample(text, "tokenledger_usage_events_total", status="created") == sent
    assert sample(text, "tokenledger_usage_events_total", status="duplicate") == 0
    requests = sample(
        text, "tokenledger_http_requests_total", method="POST", route="/api/v1/usage", status="200"
    )
    assert requests == sent
    latency = sample(
        text,
        "tokenledger_http_request_duration_seconds_count",
        method="POST",
        route="/api/v1/usage",
    )
    assert latency == sent


def test_outbox_depth_and_oldest_pending_age(database_url, database):
    with database.session(write=True) as session:
        create_webhook(
            session,
            WebhookCreate(url="http://127.0.0.1:9/hook"),
            actor=Operator("tests"),
            allow_private=True,
        )
    tenant = new_tenant(
        database,
        {"credits_total": Decimal(1), "cost_per_credit": Decimal("0.001"), "valid_from": utcnow()},
    )
    settings = make_settings(database_url)
    with TestClient(create_app(settings)) as client:
        empty = client.get("/metrics").text
        assert sample(empty, "tokenledger_webhook_outbox_pending") == 0
        assert sample(empty, "tokenledger_webhook_outbox_oldest_pending_age_seconds") == 0
        event = {"id": "o-1", "model": "claude-sonnet-4-5", "input_tokens": 1000}
        response = client.post("/api/v1/usage", json={"events": [event]}, headers=tenant.headers)
        assert response.status_code == 200, response.text
        text = client.get("/metrics").text
    # $0.003 against 1 credit of $0.001: credits.warning and credits.exhausted, one hook.
    assert sample(text, "tokenledger_webhook_outbox_pending") == 2
    assert 0 <= sample(text, "tokenledger_webhook_outbox_oldest_pending_age_seconds") < 60
    assert sample(text, "tokenledger_webhook_deliveries_failed") == 0


# prometheus_client's multiprocess files: counter_<pid>.db, histogram_<pid>.db, gauge_*.
METRICS_FILES = re.compile(r"^(counter|histogram|gauge_[a-z]+|summary)_\d+\.db$")


def _metrics_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*.db") if METRICS_FILES.match(p.name))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("given", "workers"), [(None, 2), ("", 1), (" ", 1), ("", 2)])
def test_a_run_leaves_no_metrics_files_behind(
    database_url, database, server_root, tmp_path, workers, given
):
    """Two counter_<pid>.db / histogram_<pid>.db files were once committed at the root:
    prometheus_client writes into the working directory when PROMETHEUS_MULTIPROC_DIR is
    set but empty. Whatever the variable says, a run writes no such file where it runs,
    and the directory it makes for several workers is gone once it stops."""
    tenant = new_tenant(database, {"valid_from": utcnow()})
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {"TMPDIR": str(temp)}
    if given is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = given
    server = Server(database_url, server_root, workers=workers, **env)
    server.start()
    try:
        for n in range(4):
            event = {"id": f"f-{n}", "model": "claude-sonnet-4-5", "input_tokens": 10}
            response = httpx.post(
                f"{server.url}/api/v1/usage",
                json={"events": [event]},
                headers=tenant.headers,
                timeout=30,
            )
            assert response.status_code == 200, response.text
        text = httpx.get(f"{server.url}/metrics", timeout=30).text
        assert _metrics_files(server_root) == []
    finally:
        server.stop()
    assert sample(text, "tokenledger_usage_events_total", status="created") == 4
    assert _metrics_files(server_root) == []
    assert sorted(p.name for p in temp.iterdir()) == []
