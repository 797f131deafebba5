"""OpenAI's completions usage and costs through the real SDK against the stand-in.

2026-11-16, gpt-4o-2024-08-06, project proj_acme (mapped to Acme):
  key_a: 1,000,000 input of which 200,000 cached and 100,000 cache writes, 50,000 output;
         the answer leaves out input_uncached_tokens (older answers): 700,000 uncached.
  key_b: 300,000 input, none cached, 0 output (input_uncached_tokens given).
  costs: "gpt-4o-2024-08-06, input" 1.123456789 and "..., output" 0.5 (JSON numbers, read
         as decimals: the SDK's float would not hold every digit) = 1.623456789 USD.
Ledger: one Acme call, 700,000 uncached input, 50,000 output, cost given: 1.5 USD.
2026-11-17: key_a only, 100 input, cost 0.000001: the ledger lacks it.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from fastapi.testclient import TestClient
from tests.conftest import NOW
from tests.provider_reports.conftest import ingest
from tests.provider_reports.standin import StandIn, completions_result, costs_result

from tokenledger.config import Settings
from tokenledger.db import Database
from tokenledger.provider_reports import service

GPT = "gpt-4o-2024-08-06"


def test_openai_usage_and_costs_by_project_and_key(
    fixed_client: TestClient,
    database: Database,
    settings: Settings,
    standin: StandIn,
    orgs: dict[str, Any],
    admin_headers: dict[str, str],
) -> None:
    standin.openai_usage = {
        "2026-11-16": [
            completions_result(
                GPT, "key_a", "proj_acme", input_tokens=1_000_000, cached=200_000,
                writes=100_000, output=50_000, with_uncached=False,
            ),
            completions_result(GPT, "key_b", "proj_acme", input_tokens=300_000),
        ],
        "2026-11-17": [completions_result(GPT, "key_a", "proj_acme", input_tokens=100)],
    }  # fmt: skip
    standin.openai_costs = {
        "2026-11-16": [
            costs_result(f"{GPT}, input", "proj_acme", "key_a", "1.123456789"),
            costs_result(f"{GPT}, output", "proj_acme", "key_a", "0.5"),
        ],
        "2026-11-17": [costs_result(f"{GPT}, input", "proj_acme", "key_a", "0.000001")],
    }
    ingest(
        fixed_client,
        orgs["key"],
        [
            {
                "id": "chatcmpl-1",
                "organization": "acme",
                "provider": "openai",
                "model": GPT,
                "timestamp": "2026-11-16T12:00:00Z",
                "input_tokens": 700_000,
                "output_tokens": 50_000,
                "cost_usd": "1.5",
            }
        ],
    )
    mapped = fixed_client.put(
        "/api/provider-reports/accounts/openai/project/proj_acme",
        json={"organization_id": orgs["acme"]},
        headers=admin_headers,
    )
    assert mapped.status_code == 200, mapped.text
    client = service.sdk_client(settings, "openai", max_retries=1, strict=True)
    result = service.sync(
        database, settings, "openai", date(2026, 11, 16), date(2026, 11, 17), NOW,
        actor="test", client=client,
    )  # fmt: skip
    assert result.rows == 3  # (16th, key_a), (16th, key_b), (17th, key_a)
    pages = [path for _at, path, _status in standin.requests]
    assert pages.count("/v1/organization/usage/completions") == 2  # a bucket a page
    assert pages.count("/v1/organization/costs") == 2

    for extra in ({}, {"organization_id": orgs["acme"]}):
        answer = fixed_client.get(
            "/api/provider-reports/comparison",
            params={"provider": "openai", "from": "2026-11-16", "to": "2026-11-17", **extra},
            headers=admin_headers,
        )
        assert answer.status_code == 200, answer.text
        rows = {(r["day"], r["model"]): r for r in answer.json()["rows"]}
        day16 = rows[("2026-11-16", GPT)]
        assert day16["provider"]["uncached_input_tokens"] == 1_000_000  # 700,000 + 300,000
        assert day16["provider"]["cache_read_tokens"] == 200_000
        assert day16["provider"]["cache_write_5m_tokens"] == 100_000
        assert day16["provider"]["cost_usd"] == "1.623456789"
        assert day16["ledger"]["cost_usd"] == "1.50"
        assert day16["coverage"]["uncached_input_tokens"] == "0.7000"
        assert day16["drift_usd"] == "0.123456789"
        assert day16["drift_percent"] == "7.60"  # 0.123456789 / 1.623456789
        day17 = rows[("2026-11-17", GPT)]
        assert day17["provider"]["cost_usd"] == "0.000001"
        assert day17["coverage"]["uncached_input_tokens"] == "0.0000"
    accounts = fixed_client.get(
        "/api/provider-reports/accounts", params={"provider": "openai"}, headers=admin_headers
    ).json()
    assert sorted((a["kind"], a["external_id"], a["organization_id"]) for a in accounts) == [
        ("api_key", "key_a", None),
        ("api_key", "key_b", None),
        ("project", "proj_acme", orgs["acme"]),
    ]
