"""Rate limits per ingest key: 429 with Retry-After, off by default."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from tests.conftest import make_settings
from tests.factories import make_org
from tokenledger.app import create_app
from tokenledger.auth.service import create_api_key
from tokenledger.ratelimit import Rate, RateLimiter


def _keys(database, count: int) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    with database.session(write=True) as session:
        org = make_org(session)
        secrets = [create_api_key(session, f"k{n}", org.slug, actor=None)[1] for n in range(count)]
    return [{"Authorization": f"Bearer {secret}"} for secret in secrets]


def _budget(client: TestClient, headers: dict[str, str]) -> int:
    return client.get("/api/v1/budget", headers=headers).status_code


def test_a_key_over_its_rate_gets_429_with_retry_after(database_url, database):
    first, second = _keys(database, 2)
    settings = make_settings(database_url, ingest_rate_limit="5/m")
    with TestClient(create_app(settings)) as client:
        assert [_budget(client, first) for _ in range(5)] == [200] * 5
        refused = client.get("/api/v1/budget", headers=first)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        # One request every 12 s comes back; the test took far less than 2 of those.
        assert 1 <= int(refused.headers["Retry-After"]) <= 12
        # Writes are limited alike, and the refused one stores nothing.
        event = {"id": "limited", "model": "claude-sonnet-4-5", "input_tokens": 1}
        posted = client.post("/api/v1/usage", json={"events": [event]}, headers=first)
        assert posted.status_code == 429
        # Another key has its own allowance.
        assert _budget(client, second) == 200
        # An unknown key is still refused as unknown while it has allowance.
        assert _budget(client, {"Authorization": "Bearer tl_unknown"}) == 401
    with database.engine.connect() as connection:
        stored = connection.exec_driver_sql(
            "SELECT count(*) FROM usage_events WHERE external_id = 'limited'"
        ).scalar()
    assert stored == 0


def test_no_limit_by_default(database_url, database, client):
    (headers,) = _keys(database, 1)
    assert [_budget(client, headers) for _ in range(40)] == [200] * 40


def test_the_bucket_refills_at_the_rate():
    now = [100.0]
    limiter = RateLimiter(Rate.parse("2/s"), clock=lambda: now[0])
    assert [limiter.take("key") for _ in range(2)] == [0, 0]
    assert limiter.take("key") == pytest.approx(0.5)  # half a second to the next token
    now[0] += 0.5
    assert limiter.take("key") == 0
    assert limiter.take("key") == pytest.approx(0.5)
    now[0] += 10  # a long pause refills to the burst, no further
    assert [limiter.take("key") for _ in range(3)] == [0, 0, pytest.approx(0.5)]
    assert limiter.take("other") == 0


@pytest.mark.parametrize("text", ["100", "0/s", "5/d", "x/s", "-1/m"])
def test_a_malformed_rate_is_a_configuration_error(text):
    with pytest.raises(ValidationError, match="requests"):
        make_settings("sqlite://", ingest_rate_limit=text)


def test_rates_parse():
    assert Rate.parse("100/s") == Rate(100, 1)
    assert Rate.parse(" 6000 / m ") == Rate(6000, 60)
    assert Rate.parse("50000/h").per_second == pytest.approx(50000 / 3600)
